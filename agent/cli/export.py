"""``herd submit --export``: the environment a job gets from the shell that submits it, as Slurm's
``sbatch --export`` gives it (``ALL`` by default, ``NONE``, or ``NAME,...``, each with ``NAME=VALUE``s).

Some variables are never sent: the server sets ``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER`` and every
``HERD_*`` one (your ``HERD_TOKEN`` stays in your shell), and the shell's own bookkeeping (``PWD``,
``SHLVL``, ``_``, a tmux client's ``TMUX``) means nothing to a job. A whole environment may also hold
what the server cannot pass on to a process: a name that is no variable's (a bash function), a value
that is not UTF-8, or more than the limits of ``tools.models`` (variables, bytes per value, bytes in
all). Those are left out, the largest first and never the ones a program needs to find itself
(``PATH``, ``VIRTUAL_ENV``, ...), and said in a warning: the job still goes in.
"""

from __future__ import annotations

from typing import Mapping

from tools.models import _ENV_NAME, MAX_ENV_BYTES, MAX_ENV_VALUE, MAX_ENV_VARS, RESERVED_ENV

NEVER = frozenset({"_", "PWD", "OLDPWD", "SHLVL", "TMUX", "TMUX_PANE", "COLUMNS", "LINES"}) | RESERVED_ENV
# Kept however large the environment: what a job needs to find its programs, libraries and home.
KEEP = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV",
        "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_EXE", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "CUDA_HOME",
        "CUDA_PATH", "TMPDIR")
SHOWN = 8  # names a warning lists before "and N more"


def _size(key: str, value: str) -> int:
    return len(key) + 1 + len(value.encode("utf-8", "surrogatepass"))


def exported(spec: str, environ: Mapping[str, str], explicit: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The variables to send for ``--export spec`` from ``environ``, with ``explicit`` ones (``--env``)
    on top; and a warning naming what was left out, or None. ValueError for a spec that is not one."""
    words = [w.strip() for w in spec.split(",") if w.strip()]
    if not words:
        raise ValueError("--export wants ALL, NONE or variable names, e.g. --export PATH,VIRTUAL_ENV")
    given = dict(explicit)
    names: list[str] = []
    everything = False
    for word in words:
        name, sep, value = word.partition("=")
        if sep:
            given.setdefault(name, value)
        elif word.upper() == "ALL":
            everything = True
        elif word.upper() == "NONE":
            continue
        else:
            names.append(word)
    if everything:
        chosen = {k: v for k, v in environ.items() if k not in NEVER and not k.startswith("HERD_")}
    else:
        chosen = {k: environ[k] for k in names if k in environ}
    for key in given:
        chosen.pop(key, None)
    left_out: list[str] = []
    for key, value in list(chosen.items()):
        why = None
        if not _ENV_NAME.match(key):
            why = "not a variable's name"
        elif key in NEVER or key.startswith("HERD_"):
            why = "the server's own"
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                why = "not UTF-8"
            else:
                if len(value.encode("utf-8")) > MAX_ENV_VALUE:
                    why = f"over {MAX_ENV_VALUE // 1024} KiB"
        if why is not None:
            del chosen[key]
            left_out.append(f"{key} ({why})")
    # Within the limits of the whole: drop the largest that a job can most likely do without.
    count = len(chosen) + len(given)
    total = sum(_size(k, v) for k, v in {**chosen, **given}.items())
    spare = sorted((k for k in chosen if k not in KEEP), key=lambda k: (-_size(k, chosen[k]), k))
    dropped_for_limits = []
    for key in spare:
        if count <= MAX_ENV_VARS and total <= MAX_ENV_BYTES:
            break
        total -= _size(key, chosen.pop(key))
        count -= 1
        dropped_for_limits.append(key)
    variables = {**chosen, **given}
    if not left_out and not dropped_for_limits:
        return variables, None
    parts = []
    if left_out:
        parts.append(_names(left_out))
    if dropped_for_limits:
        parts.append(f"{_names(dropped_for_limits)} (to keep within {MAX_ENV_VARS} variables and "
                     f"{MAX_ENV_BYTES // 1024} KiB in all)")
    warning = (f"--export: not sent to the job: {'; '.join(parts)}. Give it what it needs with --env KEY=VALUE, "
               "or send only what it needs: --export PATH,VIRTUAL_ENV,...")
    return variables, warning


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")

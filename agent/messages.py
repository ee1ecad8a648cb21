"""Sentences for people, shared by the REST app, the CLI and the model's tool loop (so this module
imports no FastAPI)."""

from __future__ import annotations


def describe_errors(errors: list[dict]) -> str:
    """pydantic's error list as one line: ``priority: Input should be less than or equal to 10``."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        if error.get("type") == "json_invalid":
            why = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the request body is not valid JSON ({why})" if why else "the request body is not valid JSON")
            continue
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(parts) or "invalid request"

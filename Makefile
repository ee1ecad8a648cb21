# `make run` and `make test` each set up everything they need on a fresh machine; `make install` puts
# herd on your PATH.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BINDIR ?= $(HOME)/.local/bin

.PHONY: run test install tmux chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ray]'  # ray: the many-node tests (tests/test_ray.py)
	touch $(STAMP)
	@echo "herd is $(VENV)/bin/herd: 'make install' puts it on your PATH (or: export PATH=$(abspath $(VENV))/bin:\$$PATH)"

# tmux runs every job; install it when we can, otherwise say exactly what is missing.
tmux:
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing tmux"; apt-get update -qq && apt-get install -y -qq tmux >/dev/null; \
	  else \
	    echo "gpuherd needs tmux (>= 3.0): install it, e.g. 'sudo apt-get install tmux'" >&2; exit 1; \
	  fi; }

# Debian's chromium, which the dashboard's browser tests drive through Playwright (Playwright's own
# browser download is not reachable everywhere); without it those tests are skipped, saying so.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (for the dashboard's browser tests)"; apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "the dashboard's browser tests need chromium ('sudo apt-get install chromium'); skipping them" >&2; \
	  fi; }

# A link to .venv/bin/herd in BINDIR (~/.local/bin; a lab's head node: sudo make install BINDIR=/usr/local/bin,
# with the clone where every user can read it).
install: $(STAMP)
	@mkdir -p $(BINDIR)
	@ln -sf $(abspath $(VENV))/bin/herd $(BINDIR)/herd
	@case ":$$PATH:" in *":$(BINDIR):"*) echo "herd: $(BINDIR)/herd";; \
	  *) echo "herd: $(BINDIR)/herd; $(BINDIR) is not on your PATH: add it, e.g. echo 'export PATH=$(BINDIR):\$$PATH' >> ~/.bashrc";; esac

run: $(STAMP) tmux
	$(VENV)/bin/herd serve --single-user

test: $(STAMP) tmux chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .herd .pytest_cache

# The two commands a newcomer needs are `make demo` and `make test`; the rest are their parts.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: install test demo bench chromium docker-compose lint proto clean

install: $(VENV)/.installed

# Idempotent: re-runs pip only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev,bitsandbytes]'
	touch $@

# Browser tests drive Debian's chromium; install it when we may (root) and it is missing.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# The deployment tests validate docker-compose.yml with `docker-compose config` (no Docker daemon needed);
# install Debian's docker-compose when we may (root) and it is missing, without its recommended docker.io.
# The package lists are refreshed only if the install fails without it (the chromium step may just have).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
docker-compose:
	@if ! command -v docker-compose >/dev/null && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's docker-compose for the deployment tests"; \
		$(APT_INSTALL) docker-compose >/dev/null 2>&1 || \
			{ apt-get update -qq && $(APT_INSTALL) docker-compose >/dev/null; }; \
	fi

test: install chromium docker-compose
	$(PY) -m pytest $(PYTEST_ARGS)

# The site on SQLite, a demo run, and three local volunteer peers; prints the URL to open.
demo: install
	$(PY) -m backend.cli demo --workdir .demo

bench: install
	@for script in $$(grep -l '^if __name__ == "__main__":' benchmarks/*.py); do \
		echo "== $$script"; $(PY) $$script || exit 1; done

lint: install
	$(VENV)/bin/ruff check peer backend tests benchmarks
	$(VENV)/bin/mypy peer

proto: install
	$(PY) -m peer.proto.generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

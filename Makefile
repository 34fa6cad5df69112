# Every Go module in the repository: the core, each nested module, and the
# tools module.
MODULES := $(shell find . -name go.mod -not -path '*/testdata/*' -not -path './.*' -exec dirname {} \; | sort)

# The tools module (staticcheck, the test summary) is not in go.work: its
# dependencies stay out of the workspace.
TOOLS := internal/tools
TOOLGO := GOWORK=off go -C $(TOOLS)

.PHONY: test lint bench

# test runs every test of every module, with the race detector. Tests of an
# adapter need its engine (Redis, NATS, PostgreSQL) and the browser test
# needs Chromium; outside CI they skip with a message saying what to start.
test:
	@failed=; for m in $(MODULES); do \
		echo "== go test $$m"; \
		(cd $$m && GOWORK=off go test -race -count=1 ./...) || failed="$$failed $$m"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi

# lint checks formatting, go vet, staticcheck and go.mod tidiness. It
# builds staticcheck itself, at the version the tools module requires.
lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	@staticcheck=$$($(TOOLGO) tool -n staticcheck) || exit 1; \
	failed=; for m in $(MODULES); do \
		echo "== lint $$m"; \
		(cd $$m && GOWORK=off go vet ./... && GOWORK=off $$staticcheck ./... && GOWORK=off go mod tidy -diff) || failed="$$failed $$m"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi

# bench runs the core benchmarks.
bench:
	go test -run '^$$' -bench . -benchmem .

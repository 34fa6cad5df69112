# Every Go module in the repository: the core and each nested module.
MODULES := $(shell find . -name go.mod -not -path '*/testdata/*' -exec dirname {} \; | sort)

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

# lint checks formatting, go vet, staticcheck and go.mod tidiness.
lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	@failed=; for m in $(MODULES); do \
		echo "== lint $$m"; \
		(cd $$m && GOWORK=off go vet ./... && GOWORK=off staticcheck ./... && GOWORK=off go mod tidy -diff) || failed="$$failed $$m"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi

# bench runs the core benchmarks.
bench:
	go test -run '^$$' -bench . -benchmem .

# Every Go module in the repository: the core, each nested module (the
# JavaScript client's test server, js/test/server, is one), and the tools
# module.
MODULES := $(shell find . -name go.mod -not -path '*/testdata/*' -not -path '*/node_modules/*' -not -path './.*' -exec dirname {} \; | sort)

# The tools module (staticcheck, the module proxy writer, the test summary)
# is not in go.work: its dependencies stay out of the workspace.
TOOLS := internal/tools
TOOLGO := GOWORK=off go -C $(TOOLS)

# A file-based module proxy serving the versions pinned in release-pins.txt,
# which the nested modules require. Builds outside the workspace (make lint,
# GOWORK=off) find them there until they are published; see RELEASING.md.
MODPROXY := $(CURDIR)/.modproxy
PROXYENV := GOPROXY=file://$(MODPROXY),$(shell go env GOPROXY) GONOSUMDB=$(shell go env GONOSUMDB),github.com/wsroom/wsroom

.PHONY: test chat lint modproxy pin release-check bench

# test runs every test of every module with the race detector, twice: with
# the default GOMAXPROCS, then with GOMAXPROCS=1. The nested modules are
# tested in the workspace (go.work), so against the core of this tree; the
# tools module on its own. Tests of an adapter need its engine (Redis, NATS, PostgreSQL) and the
# browser test needs Chromium; outside CI they skip with a message saying
# what to start. Then the JavaScript client's tests (js/, node --test
# against a real server built from js/test/server), whose devDependencies
# npm ci installs. The run ends with a summary of skipped and failed Go
# tests; under CI (CI set) a skipped test fails it. Any failure, Go or
# JavaScript, fails the run. The pinned versions the nested modules require
# come from the module proxy of make modproxy until they are published.
test: modproxy
	@export $(PROXYENV); ts=$$($(TOOLGO) tool -n testsummary) || exit 1; \
	rec=$$(mktemp); trap 'rm -f "$$rec"' EXIT; failed=; \
	for procs in default 1; do \
		for m in $(MODULES); do \
			if [ $$m = ./$(TOOLS) ]; then work=off; else work=$(CURDIR)/go.work; fi; \
			if [ $$procs = default ]; then env="env -u GOMAXPROCS"; else env="env GOMAXPROCS=$$procs"; fi; \
			echo "== go test $$m (GOMAXPROCS=$$procs)"; \
			(cd $$m && GOWORK=$$work $$env $$ts run -record "$$rec" -label "$$m GOMAXPROCS=$$procs" -- \
				go test -json -race -count=1 ./...) || failed=1; \
		done; \
	done; \
	echo "== npm test js"; \
	(cd js && npm ci --ignore-scripts --no-audit --no-fund && npm test) || failed=1; \
	$$ts report $${CI:+-fail-on-skip} -expected .ci/expected-skips "$$rec" && [ -z "$$failed" ]

# chat runs the chat demo (examples/chat) on http://localhost:8800; ARGS
# are its flags, e.g. make chat ARGS=-redis=localhost:6379.
chat: modproxy
	@export $(PROXYENV) && go run ./examples/chat $(ARGS)

# lint checks formatting, then in each module on its own (GOWORK=off): go
# vet, staticcheck, go.mod tidiness, and that it requires the pinned
# versions of release-pins.txt.
lint: modproxy
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	@staticcheck=$$($(TOOLGO) tool -n staticcheck) || exit 1; \
	failed=; for m in $(MODULES); do \
		echo "== lint $$m"; \
		(cd $$m && export GOWORK=off $(PROXYENV) && \
			go vet ./... && $$staticcheck ./... && go mod tidy -diff && \
			$(CURDIR)/.ci/check-pins $(CURDIR)/release-pins.txt) || failed="$$failed $$m"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi

# modproxy writes the module proxy of the pinned versions into .modproxy.
modproxy:
	@grep -v '^#' release-pins.txt | $(TOOLGO) tool modproxy -repo $(CURDIR) -out $(MODPROXY) >/dev/null

# pin makes every nested module require the versions of release-pins.txt
# and updates its go.sum: edit the file, then run make pin.
pin: modproxy
	@grep -v '^#' release-pins.txt | while read -r dir version commit; do \
		[ -n "$$dir" ] || continue; \
		path=$$(sed -n 's/^module[[:space:]]\{1,\}//p' $$dir/go.mod); \
		for m in $(filter-out . ./$(TOOLS),$(MODULES)); do \
			[ "$$m" != "./$$dir" ] || continue; \
			if GOWORK=off go mod edit -json $$m/go.mod | grep -q "\"Path\": \"$$path\""; then \
				echo "$$m: require $$path $$version"; \
				(cd $$m && export GOWORK=off $(PROXYENV) && \
					go mod edit -require=$$path@$$version && go mod tidy) || exit 1; \
			fi; \
		done; \
	done

# release-check installs the core and every adapter, as tagged from this
# tree, in a new module through a file-based proxy, and builds with them.
release-check:
	@.ci/release-check

# bench runs the core benchmarks.
bench:
	go test -run '^$$' -bench . -benchmem .

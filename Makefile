# The README's two commands:
#   make demo   the main job on embedded defaults: a real Nix build all the
#               way to a substitutable, verified cache entry
#   make test   the whole test suite (race detector on)
# Both install what they need when it is missing (scripts/install-deps.sh).

GO       ?= go
DEMO_DIR ?= provenix-demo
export PATH := $(PATH):$(shell $(GO) env GOPATH)/bin:/usr/sbin

.PHONY: demo test deps build bench cross fuzz vet clean

build:
	$(GO) build -o provenix ./cmd/provenix

demo:
	scripts/install-deps.sh demo
	$(GO) run ./cmd/provenix demo --data-dir $(DEMO_DIR)

deps:
	scripts/install-deps.sh test

test: deps vet cross
	$(GO) test -race -count=1 -timeout 30m ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# The binary must compile for every platform the runner serves. linux/amd64
# is built static (CGO_ENABLED=0), as the tests build it to run inside the
# Nix version chroots (internal/testnix): their build then hits the cache.
cross:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -o /dev/null ./cmd/provenix
	GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/provenix
	GOOS=darwin GOARCH=amd64 $(GO) build -o /dev/null ./cmd/provenix
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/provenix

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

# Every fuzz target, FUZZTIME each (their seed corpora under testdata/fuzz
# also run as plain tests in `make test`). Minimizing a new input is capped
# so a slow target cannot spend the whole budget on one.
FUZZTIME ?= 30s
FUZZ_TARGETS = attest:FuzzVerifyBundle attest:FuzzStatement queue:FuzzDecodeResult \
	queue:FuzzDecodeRebuildRequest cache-push/policy:FuzzPolicy cache-push:FuzzNarinfo \
	nix:FuzzFilterExport storepath:FuzzCheck vsa:FuzzVerify
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $${t#*:} ($${t%%:*})"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./$${t%%:*}/; \
	done

clean:
	rm -rf provenix $(DEMO_DIR)

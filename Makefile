# Caddy Prelude. `make run` builds ./caddy and serves the demo; `make test`
# prepares the machine (scripts/test-deps.sh) and runs every check and test.

GO ?= go
export CI ?=

.PHONY: all build run test test-deps check bench bench-deps fuzz clean

all: build

build:
	$(GO) build -o caddy ./cmd/caddy

run: build
	./caddy run --config caddyfile/demo.Caddyfile --adapter caddyfile

test-deps:
	./scripts/test-deps.sh

check:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: test-deps check
	$(GO) build -o /dev/null ./cmd/caddy
	$(GO) test -race -count=1 -timeout 20m ./...

# Side-by-side benchmarks: direct vs Caddy Prelude vs caddy-l4's proxy, in
# two layouts (BENCHMARKS.md): everything in one process sharing all CPUs;
# then ./caddy as its own process on CPU 1, client and broker on CPU 0.
# A 56 MB git clone takes seconds and a Foo round up to 1 000 000 requests, so those run fewer times.
BENCH = $(GO) test -run '^$$' -timeout 30m ./bench/
BENCH_AMQP = -bench 'ConnectionSetup|RelayThroughput|PublishThroughput' -benchtime 20x -count 3
BENCH_SMALL = -bench 'SmallMessages|SetupFarClient|CaptureVsFirehose|CaptureLargeBodies' -benchtime 10x -count 3
# Statistics on against off (and, with PRELUDE_BENCH_BASELINE_CADDY=<a caddy
# built from an earlier commit>, against that build), A-B-B-A per iteration.
BENCH_STATS = -bench 'StatsCost' -benchtime 30x -count 3
BENCH_GIT = -bench 'GitClone|GitLookup|LookupServiceSetup|LookupReloadStall|FooMessages|ZMTP$$' -benchtime 5x -count 2
BENCH_CURVE = -bench 'ZMTPCurveLibzmq' -benchtime 3x -count 2
BENCH_TUNNEL = -bench 'Tunnel' -benchtime 5x -count 2
BENCH_POOL = -bench 'PoolShortLived|PoolSteadyState|FooPool|PoolManyClients|PoolReconnect|IdleSessions' -benchtime 3x -count 1
PINNED = PRELUDE_BENCH_CADDY=$(CURDIR)/caddy PRELUDE_BENCH_CADDY_CPUS=1 taskset -c 0
# HAProxy (TCP mode) is one more path in the small-message AMQP, Foo and ZMTP CURVE
# benchmarks; bench-deps installs Debian's package when it is missing (and it can).
# Expanded when a recipe runs, so after bench-deps.
export PRELUDE_BENCH_HAPROXY ?= $(shell PATH="$$PATH:/usr/sbin" command -v haproxy 2>/dev/null)
bench-deps:
	@PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null 2>&1 || { \
		sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
		echo "bench-deps: installing haproxy"; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends haproxy >/dev/null || \
		echo "bench-deps: could not install haproxy: the benchmarks run without it"; }
bench: test-deps bench-deps build
	@echo "== HAProxy as a reference path: $(if $(PRELUDE_BENCH_HAPROXY),$(PRELUDE_BENCH_HAPROXY),not installed (apt-get install haproxy to add it))"
	@echo "== the AMQP session decoder and statistics alone, per 16-byte publish"
	$(GO) test -run '^$$' -bench 'Observe16|Track16' -count 3 ./amqp/
	@echo "== the Foo analyser alone, per message"
	$(GO) test -run '^$$' -bench Analyze -count 3 ./foo/
	@echo "== lookup tables of a million keys: load, heap, lookup latency alone and beside reloads"
	$(GO) test -run '^$$' -bench . -benchtime 3x -count 2 ./lookup/
	@echo "== the relay's copy against splice(2), bulk and round trips"
	$(GO) test -run '^$$' -bench 'Copy|RoundTrip' -count 3 ./modules/relay/
	@echo "== in process, all CPUs shared"
	$(BENCH) $(BENCH_AMQP)
	$(BENCH) $(BENCH_SMALL)
	$(BENCH) $(BENCH_STATS)
	$(BENCH) $(BENCH_GIT)
	$(BENCH) $(BENCH_CURVE)
	$(BENCH) $(BENCH_TUNNEL)
	$(BENCH) $(BENCH_POOL)
	@echo "== ./caddy as its own process on CPU 1; clients and servers on CPU 0"
	$(PINNED) $(BENCH) $(BENCH_AMQP)
	$(PINNED) $(BENCH) $(BENCH_SMALL)
	$(PINNED) $(BENCH) $(BENCH_STATS)
	$(PINNED) $(BENCH) $(BENCH_GIT)
	$(PINNED) $(BENCH) $(BENCH_CURVE)
	$(PINNED) $(BENCH) $(BENCH_TUNNEL)
	$(PINNED) $(BENCH) $(BENCH_POOL)

# Runs each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	for t in FuzzFrames FuzzMethod FuzzTable FuzzFrameTracker FuzzSessionDecoder FuzzCheckMethod FuzzClientChannels; do \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./amqp/ || exit 1; \
	done
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./git/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./socks4/
	for t in FuzzLines FuzzPending FuzzObserve; do \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./foo/ || exit 1; \
	done
	$(GO) test -run '^$$' -fuzz '^FuzzGreetingAndCommands$$' -fuzztime $(FUZZTIME) ./zmtp/
	$(GO) test -run '^$$' -fuzz '^FuzzDelivery$$' -fuzztime $(FUZZTIME) ./amqp/stream/
	$(GO) test -run '^$$' -fuzz '^FuzzReadNDJSON$$' -fuzztime $(FUZZTIME) ./amqp/replay/
	for t in FuzzParseTSV FuzzJSONToTSV FuzzParseAnswer; do \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./lookup/ || exit 1; \
	done

clean:
	rm -f caddy

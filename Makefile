# captrace: `make demo` plays the seed's scenario on a private containerd;
# `make test` runs unit, privileged, end-to-end and kernel-matrix tests.
GO ?= go
# Privileged tests need root; as another user, `make test PRIV_EXEC="sudo -E"`.
PRIV_EXEC ?=
GOTEST = CAPTRACE_REQUIRE_PRIVILEGED=1 $(GO) test $(if $(PRIV_EXEC),-exec '$(PRIV_EXEC)')

.PHONY: all build generate test test-unit e2e test-kernels bench demo install uninstall clean

all: build

build:
	$(GO) build -o bin/captrace ./cmd/captrace

# Rebuilds the committed bpf2go objects from bpf/*.c with clang.
generate:
	scripts/install-deps.sh generate
	$(GO) generate ./bpf/...

test: test-unit e2e

# Unit and privileged tests of every package (the privileged ones need root).
test-unit:
	scripts/install-deps.sh test
	$(GO) vet ./...
	$(GOTEST) -count=1 ./...

# The seed's scenarios on a private containerd 2.4 + runc + NRI + journald with
# the real daemon, then the container start latency with and without captrace.
# containerd, its shim, ctr and crictl are built once into .cache/tools/bin.
# CAPTRACE_E2E_BIN=path runs a prebuilt daemon instead of ./cmd/captrace.
E2E_BENCH ?= -bench ContainerStart -benchtime 20x
e2e:
	scripts/install-deps.sh e2e
	$(GOTEST) -count=1 -tags e2e -timeout 40m -v $(E2E_BENCH) ./test/e2e/

test-kernels:
	scripts/install-deps.sh kernels
	test/kernels/run.sh

bench:
	scripts/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 1 ./bpf/ ./plugin/

# The seed's set-priority guide on a private stack; Ctrl-C or DEMO_FLAGS=-duration=… ends it.
DEMO_FLAGS ?=
demo:
	scripts/install-deps.sh e2e
	$(GO) build -o .cache/bin/demo ./test/e2e/cmd/demo
	$(PRIV_EXEC) .cache/bin/demo $(DEMO_FLAGS)

install:
	@echo "install: see deploy/ (added by the daemon issue)"; exit 1

uninstall:
	@echo "uninstall: see deploy/"; exit 1

clean:
	rm -rf bin .cache

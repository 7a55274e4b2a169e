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

test: test-unit e2e test-kernels

# Unit and privileged tests of every package (the privileged ones need root).
test-unit:
	scripts/install-deps.sh test
	$(GO) vet ./...
	$(GOTEST) -count=1 ./...

e2e:
	scripts/install-deps.sh e2e
	$(GOTEST) -count=1 -tags e2e -timeout 40m -v ./test/e2e/

# The privileged tests of ./bpf (and test/kernels/guestcheck) on Debian's 6.1
# and 6.12 cloud kernels under qemu: probing must pick fexit, forced kprobe must
# pass. Options: `test/kernels/run.sh -h` (e.g. KERNEL_FLAGS="-run TestOpen -host").
KERNEL_FLAGS ?=
test-kernels:
	scripts/install-deps.sh kernels
	test/kernels/run.sh $(KERNEL_FLAGS)

bench:
	scripts/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 1 ./bpf/ ./plugin/

demo:
	scripts/install-deps.sh e2e
	$(GO) run -tags e2e ./test/e2e/cmd/demo

install:
	@echo "install: see deploy/ (added by the daemon issue)"; exit 1

uninstall:
	@echo "uninstall: see deploy/"; exit 1

clean:
	rm -rf bin .cache

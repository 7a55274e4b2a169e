# captrace: `make demo` plays the seed's scenario on a private containerd;
# `make test` runs unit, privileged, end-to-end and kernel-matrix tests.
GO ?= go
# Privileged tests need root; as another user, `make test PRIV_EXEC="sudo -E"`.
PRIV_EXEC ?=
GOTEST = CAPTRACE_REQUIRE_PRIVILEGED=1 $(GO) test $(if $(PRIV_EXEC),-exec '$(PRIV_EXEC)')

.PHONY: all build dist image generate check-generated test test-unit fuzz fuzz-corpus e2e e2e-k8s test-kernels bench demo install uninstall clean

all: build

# Every binary the Makefile builds names its version (git describe) and commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILDINFO = github.com/captrace/captrace/internal/buildinfo
VERSION_LDFLAGS = -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(VERSION_LDFLAGS)" -o bin/captrace ./cmd/captrace

# Release: per architecture a static (CGO_ENABLED=0), -trimpath, stamped binary
# and a reproducible tarball (binary, unit, containerd drop-in, example config,
# LICENSE, SHA256SUMS of those), plus dist/SHA256SUMS of the tarballs. Files
# carry the commit's time (SOURCE_DATE_EPOCH), so one commit gives one tarball.
ARCHES ?= amd64 arm64
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_LDFLAGS = -s -w $(VERSION_LDFLAGS)
DIST_FILES = deploy/captrace.service deploy/containerd-nri.toml deploy/config.toml LICENSE
DISTDIR ?= dist
dist:
	rm -rf $(DISTDIR) && mkdir -p $(DISTDIR)
	set -e; for arch in $(ARCHES); do \
		name=captrace-$(VERSION)-linux-$$arch; d=$(DISTDIR)/$$name; mkdir -p $$d; \
		echo "dist: building $$name"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(RELEASE_LDFLAGS)" -o $$d/captrace ./cmd/captrace; \
		cp $(DIST_FILES) $$d/; \
		(cd $$d && sha256sum captrace $(notdir $(DIST_FILES)) > SHA256SUMS); \
		tar --sort=name --mtime=@$(SOURCE_DATE_EPOCH) --owner=0 --group=0 --numeric-owner \
			--mode=go-w -C $(DISTDIR) -cf - $$name | gzip -n -9 > $(DISTDIR)/$$name.tar.gz; \
	done
	cd $(DISTDIR) && sha256sum *.tar.gz > SHA256SUMS && cat SHA256SUMS

# The multi-arch OCI image (amd64, arm64) as an OCI layout tarball, built
# without a container engine by cmd/captrace-image from `make dist`'s static
# binaries: `ctr -n k8s.io images import dist/captrace-image.tar` tags it
# ghcr.io/captrace/captrace:$(VERSION) and :dev (the DaemonSet's reference);
# IMAGE=ref1,ref2 names it otherwise.
IMAGE ?=
image: dist
	$(GO) run ./cmd/captrace-image $(if $(IMAGE),-ref $(IMAGE)) -version $(VERSION) -revision $(COMMIT) \
		-created $(SOURCE_DATE_EPOCH) -dist $(DISTDIR) -o $(DISTDIR)/captrace-image.tar

# Rebuilds the committed bpf2go objects from bpf/*.c with clang.
generate:
	scripts/install-deps.sh generate
	$(GO) generate ./bpf/...

# Regenerates the committed objects and tables and fails if they differ from
# what is committed: a change to bpf/captrace.c must come with `make generate`.
# (clang 14 from Debian rebuilds them byte for byte.)
check-generated: generate
	@git diff --exit-code --stat -- bpf/ || { echo "check-generated: the committed bpf2go output is stale: run make generate and commit it"; exit 1; }

test: check-generated test-unit fuzz e2e e2e-k8s test-kernels

# Unit and privileged tests of every package (the privileged ones need root).
test-unit:
	scripts/install-deps.sh test
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$unformatted" ] || { echo "test-unit: not gofmt'ed (run gofmt -w):"; echo "$$unformatted"; exit 1; }
	$(GOTEST) -count=1 ./...

# Each fuzz target for FUZZTIME over untrusted input: pod annotations,
# CgroupsPath, report lines (logfmt and journal JSON), whole report inputs,
# the config file. The committed corpus (testdata/fuzz) runs as plain tests in
# test-unit; `make fuzz-corpus` adds what fuzzing found to it.
FUZZTIME ?= 5s
FUZZ_TARGETS = plugin:FuzzPolicyDecide pkg/cgmap:FuzzCgroupsPath config:FuzzParse \
	pkg/advisor:FuzzParseRecord pkg/advisor:FuzzReportInput
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "fuzz: $$fn in ./$$pkg for $(FUZZTIME)"; \
		$(GO) test ./$$pkg/ -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

fuzz-corpus: fuzz
	@cache=$$($(GO) env GOCACHE)/fuzz/github.com/captrace/captrace; \
	for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; mkdir -p $$pkg/testdata/fuzz/$$fn; \
		cp -n $$cache/$$pkg/$$fn/* $$pkg/testdata/fuzz/$$fn/ 2>/dev/null; \
		echo "fuzz-corpus: $$pkg/testdata/fuzz/$$fn: $$(ls $$pkg/testdata/fuzz/$$fn | wc -l) inputs"; \
	done

# The seed's scenarios on a private containerd 2.4 + runc + NRI + journald with
# the real daemon, then the container start latency with and without captrace.
# containerd, its shim, ctr and crictl are built once into .cache/tools/bin.
# CAPTRACE_E2E_BIN=path runs a prebuilt daemon instead of ./cmd/captrace.
E2E_BENCH ?= -bench ContainerStart -benchtime 20x
e2e:
	scripts/install-deps.sh e2e
	$(GOTEST) -count=1 -tags e2e -timeout 40m -v $(E2E_BENCH) ./test/e2e/

# A real single-node Kubernetes v1.37 (etcd, kube-apiserver, controller-manager,
# scheduler, kubelet; scripts/build-k8s.sh builds them from the Go module proxy
# into .cache/k8s, once per version) on the e2e's private containerd: captrace's
# DaemonSet from deploy/kubernetes and its image from `make image`, the seed's
# kubectl guide, the advisor's patch, restarts, NRI off, and delete -k.
# Cold ~25 min of 2 cores for the Kubernetes build; warm, the build is a no-op.
# K8S_BENCH='-bench CaptracePod -benchtime 1x' also measures the captrace pod
# with 50 traced pods (a few minutes more).
K8S_BENCH ?=
e2e-k8s: image
	scripts/install-deps.sh e2e
	scripts/build-k8s.sh
	$(GOTEST) -count=1 -tags e2e -timeout 40m -v $(K8S_BENCH) ./test/e2e/k8s/

# The privileged tests of ./bpf, test/kernels/guestcheck and seedcheck under qemu
# on Debian's cloud kernels: x86_64 6.1, 6.12 and the newest (sid; probe = fexit,
# forced tp_btf, forced kprobe) and arm64 6.12. Pin with CAPTRACE_KERNELS. Options:
# `test/kernels/run.sh -h` (e.g. KERNEL_FLAGS="-run TestOpen -host").
KERNEL_FLAGS ?=
test-kernels:
	scripts/install-deps.sh kernels
	test/kernels/run.sh $(KERNEL_FLAGS)

# The last line: captrace report over 1 M records (records/s, ratio to reading
# the lines, peak RSS of the report in a child process).
bench:
	scripts/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 1 ./bpf/ ./plugin/ ./pkg/pipeline/ ./pkg/symbolize/ ./pkg/output/ ./pkg/metrics/
	$(GO) test -run '^$$' -bench ReaderMetricsOverhead -benchtime 10x -count 1 ./cmd/captrace/
	$(GO) test -run '^$$' -bench 'Report$$' -benchtime 1x -count 1 ./pkg/advisor/

# The seed's set-priority guide on a private stack; Ctrl-C or DEMO_FLAGS=-duration=… ends it.
DEMO_FLAGS ?=
demo:
	scripts/install-deps.sh e2e
	$(GO) build -o .cache/bin/demo ./test/e2e/cmd/demo
	$(PRIV_EXEC) .cache/bin/demo $(DEMO_FLAGS)

# Install layout. DESTDIR stages a package; the config lives in /etc whatever PREFIX is.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
CONFDIR = $(SYSCONFDIR)/captrace
NRIDROPIN = $(SYSCONFDIR)/containerd/conf.d/captrace-nri.toml

# Installs the binary (built first if missing), the unit (pointing at BINDIR),
# the containerd NRI drop-in and the example config; an existing
# $(CONFDIR)/config.toml is never overwritten.
install:
	test -x bin/captrace || $(MAKE) build
	install -D -m 0755 bin/captrace $(DESTDIR)$(BINDIR)/captrace
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	sed 's|/usr/local/bin/captrace|$(BINDIR)/captrace|' deploy/captrace.service > $(DESTDIR)$(UNITDIR)/captrace.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/captrace.service
	install -D -m 0644 deploy/containerd-nri.toml $(DESTDIR)$(NRIDROPIN)
	install -m 0644 deploy/config.toml $(DESTDIR)$(CONFDIR)/config.toml.example
	@if [ -e $(DESTDIR)$(CONFDIR)/config.toml ]; then \
		echo "install: keeping the existing $(CONFDIR)/config.toml (the new example is config.toml.example)"; \
	else \
		install -m 0644 deploy/config.toml $(DESTDIR)$(CONFDIR)/config.toml; \
	fi
	@echo "next: systemctl daemon-reload && systemctl restart containerd && systemctl enable --now captrace"

# Removes what install put in place; a config.toml that differs from the
# example (edited by you) is kept.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/captrace $(DESTDIR)$(UNITDIR)/captrace.service $(DESTDIR)$(NRIDROPIN)
	@if [ -e $(DESTDIR)$(CONFDIR)/config.toml ] && ! cmp -s deploy/config.toml $(DESTDIR)$(CONFDIR)/config.toml; then \
		echo "uninstall: keeping your edited $(CONFDIR)/config.toml"; \
	else \
		rm -f $(DESTDIR)$(CONFDIR)/config.toml; \
	fi
	rm -f $(DESTDIR)$(CONFDIR)/config.toml.example
	-rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null
	@echo "next: systemctl daemon-reload && systemctl restart containerd"

clean:
	rm -rf bin dist .cache

package main

import (
	"errors"
	"fmt"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/internal/buildinfo"
	"github.com/captrace/captrace/pkg/metrics"
	"github.com/captrace/captrace/pkg/pipeline"
)

// What an operator sees of the running daemon besides events: the stats
// snapshot (msg=stats and /metrics), /healthz and /readyz, and systemd's
// notifications (READY=1, STATUS=, WATCHDOG=1).

// readerStuckAfter is how long the ring reader may spend on one event before
// /healthz (and the systemd watchdog) call it stuck. Handling an event takes
// microseconds; only a deadlock or a wedged lock makes it take seconds.
const readerStuckAfter = 30 * time.Second

// snapshot is the pipeline's one stats snapshot: the stats line and the
// metrics show it.
func (d *daemon) snapshot() pipeline.Stats {
	if !d.up.Load() {
		return pipeline.Stats{}
	}
	return d.pipeline.Stats()
}

func (d *daemon) tierName() string {
	if !d.up.Load() {
		return ""
	}
	return string(d.tracer.Tier())
}

// live is /healthz and the watchdog: the process answers and its ring reader
// is not stuck on one event or change.
func (d *daemon) live() error {
	if !d.up.Load() {
		return nil // starting: the reader does not run yet
	}
	if busy := d.pipeline.ReaderBusy(); busy > readerStuckAfter {
		return fmt.Errorf("the ring reader has been handling one event for %v", busy.Round(time.Second))
	}
	return nil
}

func (d *daemon) observeNRIRequest(request string, took time.Duration) {
	if d.metrics != nil {
		d.metrics.ObserveNRIRequest(request, took)
	}
}

// ready is /readyz: BPF is attached and containerd synchronized captrace
// over NRI (pods that start now are traced).
func (d *daemon) ready() error {
	switch {
	case !d.up.Load():
		return errors.New("starting: the BPF program is not attached yet")
	case d.stopping.Load():
		return errors.New("shutting down")
	case !d.plugin.Stats().Connected:
		return errors.New("not synchronized with containerd over NRI (the log says why)")
	}
	return nil
}

// serveMetrics binds metrics.listen before anything else starts: a taken or
// forbidden address stops the daemon at once, naming the key.
func (d *daemon) serveMetrics(cfg config.Config) (*metrics.Server, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	d.metrics = metrics.New(d.snapshot, d.tierName,
		metrics.BuildInfo{Version: buildinfo.Version(), Commit: buildinfo.Commit()}, cfg.Metrics.MaxSeries)
	srv, err := metrics.Listen(cfg.Metrics.Listen, d.metrics.Handler(metrics.Checks{Live: d.live, Ready: d.ready}))
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %q: %w: choose a free address (or another port), or set metrics.listen = \"\" to serve no endpoint", cfg.Metrics.Listen, err)
	}
	d.log.WithField("listen", srv.Addr().String()).Info("serving /metrics, /healthz and /readyz")
	return srv, nil
}

// notifySystemd tells systemd (Type=notify) what the daemon is doing; it
// does nothing outside a unit (no NOTIFY_SOCKET).
func (d *daemon) notifySystemd(state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		d.log.WithError(err).Warn("notifying systemd failed")
	}
}

// status is the STATUS= line systemctl status shows.
func (d *daemon) status() string {
	s := d.snapshot()
	nri := "waiting for containerd (NRI)"
	if s.NRI.Connected {
		nri = "synchronized with containerd"
	}
	return fmt.Sprintf("STATUS=tier %s, %d containers traced, %d events, %s", d.tierName(), s.Registry.Traced, s.Events, nri)
}

// watchdogEvery is how often to feed systemd's watchdog (half WatchdogSec),
// or 0 when the unit has none.
func watchdogEvery() time.Duration {
	every, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return 0
	}
	return every / 2
}

package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// UnixPrefix marks a Unix socket path in a listen address ("unix:/run/x.sock").
const UnixPrefix = "unix:"

// Checks answer /healthz and /readyz: nil when healthy (ready), else why not.
type Checks struct {
	// Live: the process is alive and its ring reader is not stuck.
	Live func() error
	// Ready: BPF is attached and the NRI connection is synchronized.
	Ready func() error
}

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler(checks Checks) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("/healthz", checkHandler(checks.Live))
	mux.HandleFunc("/readyz", checkHandler(checks.Ready))
	return mux
}

// checkHandler answers 200 "ok", or 503 with the reason.
func checkHandler(check func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := check(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ok: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// Server is the running endpoint.
type Server struct {
	srv      *http.Server
	listener net.Listener
	unixPath string
	done     chan error
}

// Listen binds addr ("HOST:PORT" or "unix:/path") and serves h on it. A taken
// or forbidden address is an error at once, so the daemon never runs without
// the endpoint it was told to serve. A Unix socket left by a process that is
// gone is replaced; one that answers is in use.
func Listen(addr string, h http.Handler) (*Server, error) {
	var l net.Listener
	var err error
	s := &Server{done: make(chan error, 1)}
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		l, err = listenUnix(path)
		s.unixPath = path
	} else {
		l, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	s.listener = l
	s.srv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { s.done <- s.srv.Serve(l) }()
	return s, nil
}

func listenUnix(path string) (net.Listener, error) {
	l, err := net.Listen("unix", path)
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		return l, err
	}
	fi, statErr := os.Lstat(path)
	if statErr != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("%w (%s exists and is not a socket)", err, path)
	}
	if c, dialErr := net.DialTimeout("unix", path, time.Second); dialErr == nil {
		c.Close()
		return nil, fmt.Errorf("%w (another process serves %s)", err, path)
	}
	// Nothing answers: a socket left by a process that is gone.
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	return net.Listen("unix", path)
}

// Addr is the address bound (the port chosen for ":0").
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// Close stops serving, letting running requests finish for up to timeout,
// and removes a Unix socket.
func (s *Server) Close(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	if s.unixPath != "" {
		// net's UnixListener removes its socket on Close; an error here means
		// it is already gone.
		_ = os.Remove(s.unixPath)
	}
	return err
}

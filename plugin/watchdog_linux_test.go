package plugin

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/net/multiplex"
	"github.com/containerd/ttrpc"
)

// stallingRuntime is a runtime whose first connection accepts RegisterPlugin
// and then closes before Configure, as a containerd that exits at that moment
// does; later connections relay to a real runtime (nri's pkg/adaptation).
type stallingRuntime struct {
	l       net.Listener
	real    string // socket of the real runtime
	mu      sync.Mutex
	stalled int
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newStallingRuntime(t *testing.T, socket, real string) *stallingRuntime {
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	s := &stallingRuntime{l: l, real: real}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *stallingRuntime) accept() {
	defer s.wg.Done()
	for first := true; ; first = false {
		conn, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, conn)
		s.mu.Unlock()
		if first {
			s.stall(conn)
			continue
		}
		back, err := net.Dial("unix", s.real)
		if err != nil {
			conn.Close()
			continue
		}
		s.mu.Lock()
		s.conns = append(s.conns, back)
		s.mu.Unlock()
		s.wg.Add(2)
		go func() { defer s.wg.Done(); io.Copy(back, conn); back.Close() }()
		go func() { defer s.wg.Done(); io.Copy(conn, back); conn.Close() }()
	}
}

// stall serves RegisterPlugin on conn, then closes it once the reply is out.
func (s *stallingRuntime) stall(conn net.Conn) {
	mux := multiplex.Multiplex(conn)
	l, err := mux.Listen(multiplex.RuntimeServiceConn)
	if err != nil {
		conn.Close()
		return
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		conn.Close()
		return
	}
	registered := make(chan struct{})
	api.RegisterRuntimeService(srv, registerOnly{registered})
	s.wg.Add(2)
	go func() { defer s.wg.Done(); srv.Serve(context.Background(), l) }()
	go func() {
		defer s.wg.Done()
		<-registered
		// The reply is written after the handler returns: give it a moment
		// to leave, then drop the connection before any Configure.
		time.Sleep(100 * time.Millisecond)
		s.mu.Lock()
		s.stalled++
		s.mu.Unlock()
		srv.Close()
		mux.Close()
	}()
}

type registerOnly struct{ registered chan struct{} }

func (r registerOnly) RegisterPlugin(context.Context, *api.RegisterPluginRequest) (*api.Empty, error) {
	close(r.registered)
	return &api.Empty{}, nil
}

func (registerOnly) UpdateContainers(context.Context, *api.UpdateContainersRequest) (*api.UpdateContainersResponse, error) {
	return &api.UpdateContainersResponse{}, nil
}

// containerd dropping the connection between RegisterPlugin and Configure
// leaves nri's stub waiting forever (stub.Start holds its lock and has no
// timeout): the watchdog abandons that connection and dials again, so
// Connects increases within 10 s and containers are traced again.
func TestNRIRegistrationStallRedials(t *testing.T) {
	dir := t.TempDir()
	rt := newFakeRuntime(t, filepath.Join(dir, "nri.sock"))
	stalling := newStallingRuntime(t, filepath.Join(dir, "stall.sock"), rt.socket)
	filter := newFakeFilter()
	reg := cgmap.NewRegistry(filter, nil)
	start := time.Now()
	rp := startPlugin(t, filepath.Join(dir, "stall.sock"), reg, Policy{})
	rp.waitConnects(t, 1)
	took := time.Since(start)
	stalling.mu.Lock()
	stalled := stalling.stalled
	stalling.mu.Unlock()
	if stalled != 1 {
		t.Fatalf("the runtime stalled %d connections, want 1", stalled)
	}
	if s := rp.Stats(); s.AbandonedStubs != 1 || !s.Connected {
		t.Fatalf("stats %+v: want 1 abandoned stub and connected", s)
	}
	t.Logf("reconnected %v after a registration that stalled (watchdog %v)", took.Round(time.Millisecond), DefaultRegistrationWatchdog)
}

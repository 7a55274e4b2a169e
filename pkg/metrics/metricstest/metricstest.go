// Package metricstest scrapes a captrace metrics endpoint the way Prometheus
// does (its text parser) and reads values, for tests of pkg/metrics, the
// daemon and the end-to-end run.
package metricstest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Client reaches addr: "HOST:PORT" or "unix:/path" (metrics.listen's forms).
// URL gives the address to GET a path from.
type Client struct {
	HTTP *http.Client
	base string
}

// NewClient returns a client of the endpoint at addr.
func NewClient(addr string) *Client {
	tr := &http.Transport{}
	base := "http://" + addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		base = "http://captrace"
	}
	return &Client{HTTP: &http.Client{Transport: tr, Timeout: 10 * time.Second}, base: base}
}

// Get returns the status code and body of path.
func (c *Client) Get(path string) (int, string, error) {
	resp, err := c.HTTP.Get(c.base + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// Scrape GETs /metrics and parses it with Prometheus's text parser.
func (c *Client) Scrape() (Families, error) {
	resp, err := c.HTTP.Get(c.base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return Parse(resp.Body)
}

// Families are the metric families of one scrape, by name.
type Families map[string]*dto.MetricFamily

// Parse reads the Prometheus text format.
func Parse(r io.Reader) (Families, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(r)
}

// Value is the value of the series of family name whose labels include
// labels (name, value, name, value, …); for a histogram, its sample count.
func (f Families) Value(name string, labels ...string) (float64, error) {
	fam, ok := f[name]
	if !ok {
		return 0, fmt.Errorf("no metric family %s", name)
	}
next:
	for _, m := range fam.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), nil
		case m.Gauge != nil:
			return m.Gauge.GetValue(), nil
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), nil
		}
	}
	return 0, fmt.Errorf("%s has no series with labels %v", name, labels)
}

// Sum adds every series of family name.
func (f Families) Sum(name string) float64 {
	sum := 0.0
	if fam, ok := f[name]; ok {
		for _, m := range fam.Metric {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

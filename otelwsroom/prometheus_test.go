package otelwsroom_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/wsroom/wsroom/otelwsroom"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// A /metrics scrape through the Prometheus exporter has every series, with
// Prometheus names and sane values.
func TestPrometheusScrape(t *testing.T) {
	promReg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(promReg))
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	m, err := otelwsroom.New(mp, otelwsroom.WithRooms("lobby"))
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, m)
	metrics := httptest.NewServer(promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}))
	t.Cleanup(metrics.Close)

	c1, c2 := s.dial(t, "lobby"), s.dial(t, "lobby")
	if err := c1.Write(t.Context(), websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	read(t, c1)
	read(t, c2)
	waitUntil(t, "both writes counted", func() bool { return statsOf(t, s.reg, "lobby").MessagesOut == 2 })

	scrape := func() map[string]*dto.MetricFamily {
		resp, err := http.Get(metrics.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("parse the scrape: %v", err)
		}
		return families
	}
	var families map[string]*dto.MetricFamily
	// value returns the value of the series of family name that has the
	// labels want: a counter's or gauge's value, a histogram's count.
	value := func(name string, want map[string]string) (float64, bool) {
		f := families[name]
	series:
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.Label {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return mt.Counter.GetValue(), true
			case dto.MetricType_GAUGE:
				return mt.Gauge.GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(mt.Histogram.GetSampleCount()), true
			}
		}
		return 0, false
	}
	lobby := map[string]string{"wsroom_source": "room", "wsroom_room": "lobby"}
	mux := map[string]string{"wsroom_source": "mux"}
	histogram := map[string]string{"wsroom_room": "lobby"} // histograms carry only the room
	// The loop observes a fan-out once it has queued the message, maybe
	// after the clients read it.
	waitUntil(t, "the fan-out observed", func() bool {
		families = scrape()
		n, _ := value("wsroom_fanout_duration_seconds", histogram)
		return n == 1
	})
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"wsroom_connections", lobby, 2},
		{"wsroom_connections", mux, 0},
		{"wsroom_queue_depth", lobby, 0},
		{"wsroom_joins_total", lobby, 2},
		{"wsroom_leaves_total", lobby, 0},
		{"wsroom_messages_received_total", lobby, 1},
		{"wsroom_bytes_received_total", lobby, 2},
		{"wsroom_messages_sent_total", lobby, 2},
		{"wsroom_bytes_sent_total", lobby, 2 * (2 + 2)},
		{"wsroom_messages_replayed_total", lobby, 0},
		{"wsroom_messages_dropped_total", lobby, 0},
		{"wsroom_messages_throttled_total", lobby, 0},
		{"wsroom_messages_overflow_total", lobby, 0},
		{"wsroom_publish_retries_total", lobby, 0},
		{"wsroom_resyncs_total", lobby, 0},
		{"wsroom_errors_total", lobby, 0},
		{"wsroom_closes_total", lobby, 0},
		{"wsroom_fanout_duration_seconds", histogram, 1},
		{"wsroom_delivery_duration_seconds", histogram, 2},
		{"wsroom_write_frames", histogram, 2},
	} {
		got, ok := value(tt.name, tt.labels)
		switch {
		case !ok:
			t.Errorf("no series %s%v in the scrape", tt.name, tt.labels)
		case got != tt.want:
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if n := len(families["wsroom_closes_total"].GetMetric()); n != 6*2 {
		t.Errorf("%d series of wsroom_closes_total, want 6 reasons for lobby and for mux", n)
	}
	if h := families["wsroom_delivery_duration_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleSum() <= 0 || h.GetSampleSum() > 10 {
		t.Errorf("wsroom_delivery_duration_seconds sum %vs, want in (0, 10]", h.GetSampleSum())
	}
}

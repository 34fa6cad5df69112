package otelwsroom_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/otelwsroom"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// A server of rooms that serves its metrics at /metrics, in the Prometheus
// text format, through the OpenTelemetry SDK and its Prometheus exporter.
func Example() {
	// The OpenTelemetry SDK, read by a Prometheus exporter.
	promReg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(promReg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		log.Fatal(err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer provider.Shutdown(context.Background())

	// The rooms, observed: "lobby" has series of its own, other rooms
	// add up under "(other)".
	metrics, err := otelwsroom.New(provider, otelwsroom.WithRooms("lobby"))
	if err != nil {
		log.Fatal(err)
	}
	rooms := wsroom.NewRegistry(wsroom.WithObserver(metrics))
	defer rooms.Close()
	metrics.ObserveRegistry(rooms)

	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", rooms.Handler(nil))
	mux.Handle("GET /metrics", promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}))
	srv := httptest.NewServer(mux) // http.ListenAndServe(":8080", mux) in a real server
	defer srv.Close()

	// A client joins the lobby and gets two messages.
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/rooms/lobby", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	lobby, _ := rooms.Room("lobby")
	for lobby.Stats().Joins == 0 {
		time.Sleep(time.Millisecond) // counted once it joined
	}
	for _, msg := range []string{"hello", "world"} {
		if err := rooms.Publish(ctx, "lobby", []byte(msg)); err != nil {
			log.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			log.Fatal(err)
		}
	}
	for lobby.Stats().MessagesOut < 2 {
		time.Sleep(time.Millisecond) // the writer counts after the write returns
	}

	// Scrape /metrics, as Prometheus would.
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"wsroom_connections{", "wsroom_joins_total{", "wsroom_messages_sent_total{", "wsroom_bytes_sent_total{"} {
			if strings.HasPrefix(line, name) && strings.Contains(line, `wsroom_room="lobby"`) {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// wsroom_bytes_sent_total{wsroom_room="lobby",wsroom_source="room"} 14
	// wsroom_connections{wsroom_room="lobby",wsroom_source="room"} 1
	// wsroom_joins_total{wsroom_room="lobby",wsroom_source="room"} 1
	// wsroom_messages_sent_total{wsroom_room="lobby",wsroom_source="room"} 2
}

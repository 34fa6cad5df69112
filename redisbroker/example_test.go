package redisbroker_test

import (
	"log"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/redisbroker"
)

// Every node of the cluster runs the same code against the same Redis: the
// Broker carries each room's messages to the other nodes and keeps its
// history, so a client can resume on any node.
func Example() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	broker := redisbroker.New(client,
		redisbroker.WithHistoryLimit(500),
		redisbroker.WithMaxAge(time.Hour),
		redisbroker.WithErrorHandler(func(err error) { log.Print(err) }),
	)
	defer broker.Close()

	rooms := wsroom.NewRegistry(wsroom.WithBroker(broker), wsroom.WithCodec(wsroom.JSON()), wsroom.WithHistory(50))
	defer rooms.Close()
	mux := http.NewServeMux()
	mux.Handle("GET /rooms/{name}", rooms.Handler(nil))
	_ = http.ListenAndServe(":8080", mux)
}

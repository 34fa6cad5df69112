// Command cluster runs two redisbroker Brokers, as two server nodes would,
// on a Redis Cluster: one subscribes to two rooms, the other publishes to
// them, once with a de-duplicated retry. It prints what the subscriber
// receives and which master serves each room.
//
//	go run ./example/cluster -addrs 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/redisbroker"
)

func main() {
	addrs := flag.String("addrs", "127.0.0.1:7000", "comma-separated addresses of cluster nodes")
	acks := flag.Int("replica-acks", 1, "replicas each stored publish waits for (0: none)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(*addrs, ",")})
	defer client.Close()
	opts := []redisbroker.Option{redisbroker.WithMaxAge(time.Hour)}
	if *acks > 0 {
		opts = append(opts, redisbroker.WithReplicaAcks(*acks, time.Second))
	}
	sub := redisbroker.New(client, opts...) // node 1
	defer sub.Close()
	pub := redisbroker.New(client, opts...) // node 2
	defer pub.Close()

	rooms := []string{"lobby", "news"}
	var wg sync.WaitGroup
	for _, room := range rooms {
		master, err := client.MasterForKey(ctx, redisbroker.DefaultPrefix+"{"+room+"}")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("room %s: slot owned by %s\n", room, master.Options().Addr)
		wg.Add(2)
		unsub, err := sub.Subscribe(ctx, room, func(m wsroom.Message) {
			fmt.Printf("node 1 got %s #%d: %s\n", room, m.Seq, m.Data)
			wg.Done()
		}, func(err error) { fmt.Printf("node 1 may have missed messages of %s: %v\n", room, err) })
		if err != nil {
			log.Fatal(err)
		}
		defer unsub()
	}
	for _, room := range rooms {
		m, err := pub.PublishSeq(ctx, room, wsroom.Message{Data: []byte("hello " + room)})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("node 2 published to %s as #%d\n", room, m.Seq)
		// A publish retried with the same key, as a client would after a
		// lost answer, is stored and sent once.
		for try := range 2 {
			m, dup, err := pub.PublishOnce(ctx, room, "retry-"+m.Epoch, wsroom.Message{Data: []byte("once " + room)})
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("node 2 PublishOnce to %s, try %d: #%d, dup %v\n", room, try+1, m.Seq, dup)
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		log.Fatal("deliveries did not arrive")
	}
}

package js_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/wsroom/wsroom/js"
)

// A server serves the client at a path of its choice, next to its rooms'
// endpoint, for its pages to import.
func Example() {
	mux := http.NewServeMux()
	mux.Handle("GET /wsroom.js", js.Handler())
	// mux.Handle("GET /ws", registry.MuxHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/wsroom.js")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status)
	fmt.Println(resp.Header.Get("Content-Type"))
	fmt.Println(strings.Contains(string(body), "export function connect("))

	// A page that has it revalidates it with its ETag.
	req, _ := http.NewRequest("GET", srv.URL+"/wsroom.js", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	again, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	again.Body.Close()
	fmt.Println(again.Status)
	// Output:
	// 200 OK
	// text/javascript; charset=utf-8
	// true
	// 304 Not Modified
}

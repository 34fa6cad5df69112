package sqlstore_test

import (
	"fmt"
	"os"
	"testing"
)

// TestMain fails the run if a Store's sweep goroutine is left running once
// every test and example has closed its Stores.
func TestMain(m *testing.M) {
	code := m.Run()
	if n := sweepers(0); code == 0 && n != 0 {
		fmt.Fprintf(os.Stderr, "%d sweep goroutines left running: a Store was not closed\n", n)
		code = 1
	}
	os.Exit(code)
}

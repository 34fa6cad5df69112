package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
)

// The end-to-end test drives the real page in headless Chromium: two people
// in separate browser profiles chat, see each other, share an image, reload,
// and try to inject HTML. Set CHAT_SCREENSHOT to a file name to also save a
// screenshot of the chat there (README.md's screenshot.png is made so).

// chromium returns the path of the browser, or skips the test (fails it
// when CI is set) if there is none.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const msg = "install chromium: apt-get install -y chromium"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// tab is one browser tab, with what it reported that a test must see.
type tab struct {
	t    *testing.T
	name string
	ctx  context.Context

	mu       sync.Mutex
	problems []string // dialogs, exceptions, console errors
}

// newTab opens a tab in parent's browser; opts may ask for a new browser
// context (a separate profile: its own localStorage).
func newTab(t *testing.T, parent context.Context, name string, opts ...chromedp.ContextOption) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(parent, opts...)
	t.Cleanup(cancel)
	b := &tab{t: t, name: name, ctx: ctx}
	// No timeout on the first run: it opens the tab, which lives as long as
	// this context.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(900, 600)); err != nil {
		t.Fatalf("%s: open tab: %v", name, err)
	}
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *page.EventJavascriptDialogOpening:
			b.problem("dialog opened: " + ev.Message)
			go chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		case *runtime.EventExceptionThrown:
			b.problem("exception: " + ev.ExceptionDetails.Text + " " + describe(ev.ExceptionDetails.Exception))
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var args []string
				for _, a := range ev.Args {
					args = append(args, describe(a))
				}
				b.problem("console.error: " + strings.Join(args, " "))
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func describe(o *runtime.RemoteObject) string {
	if o == nil {
		return ""
	}
	if o.Description != "" {
		return o.Description
	}
	return string(o.Value)
}

func (b *tab) problem(s string) {
	b.mu.Lock()
	b.problems = append(b.problems, s)
	b.mu.Unlock()
}

// checkProblems fails the test if the page raised a dialog, threw, or
// logged an error.
func (b *tab) checkProblems() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("%s: %s", b.name, p)
	}
}

func (b *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %s: %v", b.name, what, err)
	}
}

// waitFor waits until the JavaScript expression is truthy.
func (b *tab) waitFor(what, expr string, timeout time.Duration) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		b.t.Fatalf("%s: waiting for %s: %v", b.name, what, err)
	}
}

func eval[T any](b *tab, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("%s: eval %s: %v", b.name, expr, err)
	}
	return v
}

func (b *tab) screenshot(dir, name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	img, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("%s: screenshot: %v", b.name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, img, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

// js quotes s as a JavaScript string.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// texts is an expression listing the texts of the messages shown.
const texts = `[...document.querySelectorAll("#messages .msg .text")].map(e => e.textContent)`

// signIn opens a room's page, signs in with name, and waits to be connected.
func (b *tab) signIn(url, name string) {
	b.t.Helper()
	b.do("sign in",
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.ID("name")),
		chromedp.SendKeys(chromedp.ID("name"), name),
		chromedp.Click(chromedp.CSS("#signin-form button")),
	)
	b.waitConnected()
}

func (b *tab) waitConnected() {
	b.t.Helper()
	b.waitFor("connected", `document.getElementById("status").dataset.state === "connected"`, 10*time.Second)
}

func (b *tab) waitText(text string) {
	b.t.Helper()
	b.waitFor(fmt.Sprintf("message %q", text), texts+`.includes(`+js(text)+`)`, 10*time.Second)
}

// say types text in the message box and presses Enter.
func (b *tab) say(text string) {
	b.t.Helper()
	b.do("say "+text, chromedp.SendKeys(chromedp.ID("text"), text), pressEnter)
}

// pressEnter presses Enter in the message box as a keyboard does: one
// keydown that the page may cancel. (SendKeys adds a separate "char" event
// that inserts a newline whatever the page does.)
var pressEnter = chromedp.Steps(
	chromedp.Focus(chromedp.ID("text")),
	chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeKeyDown, input.DispatchKeyEventTypeKeyUp} {
			ev := input.DispatchKeyEventParams{Type: typ, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13}
			if typ == input.DispatchKeyEventTypeKeyDown {
				ev.Text, ev.UnmodifiedText = "\r", "\r"
			}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, ev); err != nil {
				return err
			}
		}
		return nil
	}),
)

func writePNG(t *testing.T, path string, w, h int) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(40 + 200*x/w), uint8(90 + 100*y/h), 200, 255})
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}

func TestBrowser(t *testing.T) {
	path := chromium(t)
	if testing.Short() {
		t.Skip("starts a browser")
	}
	s, err := NewServer(Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{next: s, blocked: make(map[string]bool)}
	ts := httptest.NewServer(g)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { s.Close() })
	shots := t.TempDir()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(900, 600),
	)
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	browser, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	// Two profiles: each person has their own localStorage.
	ana := newTab(t, browser, "Ana", chromedp.WithNewBrowserContext())
	ben := newTab(t, browser, "Ben", chromedp.WithNewBrowserContext())
	room := ts.URL + "/r/lobby"

	// Sign in, and see each other.
	ana.signIn(room, "Ana")
	ben.signIn(room, "  Ben ")
	for _, b := range []*tab{ana, ben} {
		b.waitFor("presence of both", `[...document.querySelectorAll("#presence li")].map(e => e.textContent).join() === "Ana,Ben"`, 10*time.Second)
		if n := eval[string](b, `document.getElementById("count").textContent`); n != "2" {
			t.Errorf("%s: count %q, want 2", b.name, n)
		}
	}
	if me := eval[string](ben, `document.getElementById("me").textContent`); me != "Signed in as Ben" {
		t.Errorf("Ben's page says %q", me)
	}

	// Typing: shown to the other, gone after ~3 s without news.
	ana.do("type", chromedp.SendKeys(chromedp.ID("text"), "hel"))
	const typing = `document.getElementById("typing").textContent`
	ben.waitFor("Ana is typing", typing+` === "Ana is typing…"`, 5*time.Second)
	shown := time.Now()
	ben.waitFor("typing to clear", typing+` === ""`, 6*time.Second)
	if d := time.Since(shown); d < 2*time.Second {
		t.Errorf("typing indicator cleared after %v, want about 3s", d)
	}
	if s := eval[string](ana, typing); s != "" {
		t.Errorf("Ana sees her own typing: %q", s)
	}
	// ...and gone at once when the message arrives.
	ana.do("type more", chromedp.SendKeys(chromedp.ID("text"), "lo, Ben"))
	ben.waitFor("Ana is typing again", typing+` === "Ana is typing…"`, 5*time.Second)
	ana.do("send", pressEnter)
	ben.waitText("hello, Ben")
	ben.waitFor("typing to clear with the message", typing+` === ""`, time.Second)
	if v := eval[string](ana, `document.getElementById("text").value`); v != "" {
		t.Errorf("Ana's box still holds %q after sending", v)
	}

	// HTML from a person stays text.
	const attack = `<img src=x onerror=alert(1)><script>alert(2)</script><b>bold</b>`
	ben.say(attack)
	ana.waitText(attack)
	for _, b := range []*tab{ana, ben} {
		if n := eval[int](b, `document.querySelectorAll("#messages img, #messages script, #messages b").length`); n != 0 {
			t.Errorf("%s: the message made %d elements", b.name, n)
		}
	}
	ana.say("Nice try, Ben.")
	ben.waitText("Nice try, Ben.")

	// An image shared by Ana shows inline for Ben.
	png := filepath.Join(t.TempDir(), "sunset.png")
	writePNG(t, png, 240, 120)
	ana.do("attach", chromedp.SetUploadFiles(chromedp.ID("file"), []string{png}))
	const shared = `document.querySelector("#messages img.shared")`
	for _, b := range []*tab{ben, ana} {
		b.waitFor("the image", shared+` && `+shared+`.complete && `+shared+`.naturalWidth === 240`, 10*time.Second)
	}
	if alt := eval[string](ben, shared+`.alt`); alt != "sunset.png" {
		t.Errorf("image alt %q, want sunset.png", alt)
	}
	ben.say("Lovely!")
	ana.waitText("Lovely!")
	ana.screenshot(shots, "ana.png")
	ben.screenshot(shots, "ben.png")
	if out := os.Getenv("CHAT_SCREENSHOT"); out != "" {
		img := ben.screenshot(shots, "readme.png")
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A reload shows the history, once.
	before := eval[[]string](ben, texts)
	ben.do("reload", chromedp.Reload())
	ben.waitConnected()
	ben.waitFor("history", texts+`.length === `+fmt.Sprint(len(before)), 10*time.Second)
	after := eval[[]string](ben, texts)
	if strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("after reload Ben sees %q, want %q", after, before)
	}
	ben.waitFor("the image after reload", shared+` && `+shared+`.naturalWidth === 240`, 10*time.Second)
	ana.waitFor("Ben back", `[...document.querySelectorAll("#presence li")].map(e => e.textContent).join() === "Ana,Ben"`, 10*time.Second)

	// Ben loses his connection while Ana writes: his page reconnects with
	// backoff, resumes, and shows what he missed, once.
	lastSeq := eval[string](ben, `[...document.querySelectorAll("#messages li[data-seq]")].pop().dataset.seq`)
	g.block("Ben", true)
	kick(t, s, "lobby", "Ben")
	ben.waitFor("reconnecting", `document.getElementById("status").dataset.state === "reconnecting"`, 5*time.Second)
	ana.say("while you were away 1")
	ana.say("while you were away 2")
	ana.waitText("while you were away 2")
	if eval[bool](ben, texts+`.includes("while you were away 1")`) {
		t.Fatal("Ben got a message while disconnected")
	}
	g.block("Ben", false)
	ben.waitConnected()
	ben.waitText("while you were away 2")
	want := eval[[]string](ana, texts)
	if got := eval[[]string](ben, texts); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after resuming Ben sees %q, want %q", got, want)
	}
	resumes := g.resumesOf("Ben")
	if r := resumes[len(resumes)-1]; !strings.HasSuffix(r, ":"+lastSeq) {
		t.Errorf("Ben resumed with %q, want the position of message %s, the last he saw", r, lastSeq)
	}
	if len(resumes) < 3 {
		t.Errorf("Ben's handshakes: %q; want some refused ones before the resume", resumes)
	}

	// When the history cannot serve the resume (4000), the page starts
	// afresh from the recent history.
	g.breakNextResume()
	kick(t, s, "lobby", "Ben")
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := g.resumesOf("Ben")
		if n := len(r); n >= 2 && strings.HasPrefix(r[n-2], "bogus:") && r[n-1] == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ben's reconnects: %q; want a refused resume then a fresh start", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ben.waitConnected()
	ben.waitFor("history after resync", texts+`.length === `+fmt.Sprint(len(want)), 10*time.Second)
	if got := eval[[]string](ben, texts); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after the resync Ben sees %q, want %q", got, want)
	}

	// A second tab of Ben's: a bad room name is explained, then another room
	// keeps its messages to itself.
	other := newTab(t, ben.ctx, "Ben (other room)")
	other.do("bad room", chromedp.Navigate(ts.URL+"/r/no%20spaces"))
	other.waitFor("bad room message", `(document.getElementById("page-error") || {}).textContent === `+
		js(`"no spaces" is not a valid room name: a room name is 1 to 64 letters, digits, '-', '_' or '.', and does not start with '.'.`), 5*time.Second)
	other.do("lobby", chromedp.Navigate(ts.URL+"/"))
	other.waitFor("room list", `[...document.querySelectorAll("#rooms li")].map(e => e.textContent).join() === "lobby 2 people"`, 10*time.Second)
	other.do("bad room in the form",
		chromedp.SendKeys(chromedp.ID("room"), ".hidden"),
		chromedp.Click(chromedp.CSS("#goto-form button")),
	)
	other.waitFor("form error", `document.getElementById("room-error").textContent.includes("is not a valid room name")`, 5*time.Second)
	other.do("good room in the form",
		chromedp.SetValue(chromedp.ID("room"), "other"),
		chromedp.Click(chromedp.CSS("#goto-form button")),
		chromedp.WaitVisible(chromedp.ID("text")), // the room's page
	)
	other.waitConnected()
	if loc := eval[string](other, `location.pathname`); loc != "/r/other" {
		t.Errorf("the form went to %s, want /r/other", loc)
	}
	other.waitFor("alone in other", `document.getElementById("count").textContent === "1"`, 5*time.Second)
	ana.say("only for the lobby")
	other.say("only for the other room")
	ben.waitText("only for the lobby")
	other.waitText("only for the other room")
	if got := eval[[]string](other, texts); len(got) != 1 {
		t.Errorf("the other room shows %q, want its own message only", got)
	}
	if eval[bool](ana, texts+`.includes("only for the other room")`) {
		t.Error("the lobby got the other room's message")
	}

	// A server with a token: the page asks for it and says when it is
	// wrong; a name in use is refused with a message.
	ts2 := newTokenServer(t, "s3cret")
	dee := newTab(t, browser, "Dee", chromedp.WithNewBrowserContext())
	dee.do("token sign-in",
		chromedp.Navigate(ts2.URL+"/r/lobby"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("name"), "Dee"),
		chromedp.SendKeys(chromedp.ID("token"), "wrong"),
		chromedp.Click(chromedp.CSS("#signin-form button")),
	)
	dee.waitFor("wrong token message", `document.getElementById("signin-error").textContent.startsWith("Wrong token")`, 5*time.Second)
	dee.do("right token",
		chromedp.SetValue(chromedp.ID("token"), "s3cret"),
		chromedp.Click(chromedp.CSS("#signin-form button")),
	)
	dee.waitConnected()
	dee2 := newTab(t, browser, "another Dee", chromedp.WithNewBrowserContext())
	dee2.do("same name",
		chromedp.Navigate(ts2.URL+"/r/lobby"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("name"), "dee"),
		chromedp.SendKeys(chromedp.ID("token"), "s3cret"),
		chromedp.Click(chromedp.CSS("#signin-form button")),
	)
	dee2.waitFor("name taken message", `document.getElementById("signin-error").textContent === "Someone in lobby is already called dee"`, 5*time.Second)

	for _, b := range []*tab{ana, ben, other, dee, dee2} {
		b.checkProblems()
	}
}

func newTokenServer(t *testing.T, token string) *httptest.Server {
	t.Helper()
	_, ts := newTestServer(t, Options{Token: token})
	return ts
}

// gate stands between the browser and the chat server, to play network
// trouble: it refuses the handshakes of some names, and can break a resume
// position. It records the resume parameter of every handshake.
type gate struct {
	next http.Handler

	mu          sync.Mutex
	blocked     map[string]bool
	breakResume bool
	resumes     map[string][]string // name → resume parameters, in order
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/rooms/") {
		q := r.URL.Query()
		name, resume := q.Get("name"), q.Get("resume")
		g.mu.Lock()
		blocked := g.blocked[name]
		if !blocked && resume != "" && g.breakResume {
			g.breakResume = false
			resume = "bogus:" + resume[strings.LastIndexByte(resume, ':')+1:]
			q.Set("resume", resume)
			r.URL.RawQuery = q.Encode()
		}
		if g.resumes == nil {
			g.resumes = make(map[string][]string)
		}
		g.resumes[name] = append(g.resumes[name], resume)
		g.mu.Unlock()
		if blocked {
			http.Error(w, "blocked by the test", http.StatusServiceUnavailable)
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

func (g *gate) block(name string, on bool) {
	g.mu.Lock()
	g.blocked[name] = on
	g.mu.Unlock()
}

// breakNextResume makes the next handshake that resumes ask for a position
// in an epoch the room never had.
func (g *gate) breakNextResume() {
	g.mu.Lock()
	g.breakResume = true
	g.mu.Unlock()
}

func (g *gate) resumesOf(name string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.resumes[name])
}

// kick closes name's connection to room from the server's side.
func kick(t *testing.T, s *Server, room, name string) {
	t.Helper()
	r, err := s.rooms.Room(room)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.Clients() {
		if c.Identity().(identity).Name == name {
			c.Close(websocket.StatusGoingAway, "kicked by the test")
			return
		}
	}
	t.Fatalf("%s is not in %s", name, room)
}

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
	"net/http/httputil"
	"net/url"
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
const texts = `[...document.querySelectorAll(".messages:not([hidden]) .msg:not(.pending) .text")].map(e => e.textContent)`

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

// views is an expression listing the views the page shows, by their
// computed style: exactly one of sign-in, lobby and chat at a time.
const views = `["signin", "lobby", "chat"].filter(id => getComputedStyle(document.getElementById(id)).display !== "none").join()`

// presence is an expression listing the names the room's presence shows.
const presence = `[...document.querySelectorAll("#presence li")].map(e => e.textContent).join()`

// unread is an expression listing the unread counts of the room list, as
// "room:n".
const unread = `[...document.querySelectorAll("#my-rooms button")].map(b => b.dataset.room + ":" + ((b.querySelector(".unread") || {}).textContent || 0)).join()`

func startBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromium(t)
	if testing.Short() {
		t.Skip("starts a browser")
	}
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
	return browser
}

func TestBrowser(t *testing.T) {
	browser := startBrowser(t)
	s, err := NewServer(Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{next: s, blocked: make(map[string]bool)}
	ts := httptest.NewServer(g)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { s.Close() })
	shots := shotsDir(t)

	// Two profiles: each person has their own localStorage.
	ana := newTab(t, browser, "Ana", chromedp.WithNewBrowserContext())
	ben := newTab(t, browser, "Ben", chromedp.WithNewBrowserContext())
	room := ts.URL + "/r/lobby"

	// Sign in, and see each other. The sign-in view and the room never
	// show together.
	ana.do("open", chromedp.Navigate(room), chromedp.WaitVisible(chromedp.ID("name")))
	if v := eval[string](ana, views); v != "signin" {
		t.Errorf("before sign-in the page shows %q, want signin only", v)
	}
	ana.signIn(room, "Ana")
	ben.signIn(room, "  Ben ")
	for _, b := range []*tab{ana, ben} {
		if v := eval[string](b, views); v != "chat" {
			t.Errorf("%s: after sign-in the page shows %q, want chat only", b.name, v)
		}
		b.waitFor("presence of both", presence+` === "Ana,Ben"`, 10*time.Second)
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
	if n := eval[int](ben, `document.querySelectorAll(".messages:not([hidden]) .day").length`); n != 1 {
		t.Errorf("Ben sees %d date separators, want 1", n)
	}

	// HTML from a person stays text; http(s) URLs become safe links, other
	// schemes do not.
	const attack = `<img src=x onerror=alert(1)><script>alert(2)</script><b>bold</b>`
	ben.say(attack)
	ana.waitText(attack)
	for _, b := range []*tab{ana, ben} {
		if n := eval[int](b, `document.querySelectorAll(".messages img, .messages script, .messages b").length`); n != 0 {
			t.Errorf("%s: the message made %d elements", b.name, n)
		}
	}
	const links = "see https://go.dev/doc, or javascript:alert(1) and http://example.com/a?b=c."
	ana.say(links)
	ben.waitText(links)
	got := eval[[]string](ben, `[...document.querySelectorAll(".messages .text a")].map(a => a.href + " " + a.rel + " " + a.textContent)`)
	want := []string{"https://go.dev/doc noopener noreferrer https://go.dev/doc", "http://example.com/a?b=c noopener noreferrer http://example.com/a?b=c"}
	if !slices.Equal(got, want) {
		t.Errorf("links %q, want %q", got, want)
	}

	// An image shared by Ana shows inline for Ben, in a fixed box.
	png := filepath.Join(t.TempDir(), "sunset.png")
	writePNG(t, png, 240, 120)
	ana.do("attach", chromedp.SetUploadFiles(chromedp.ID("file"), []string{png}))
	const shared = `document.querySelector(".messages:not([hidden]) img.shared")`
	for _, b := range []*tab{ben, ana} {
		b.waitFor("the image", shared+` && `+shared+`.complete && `+shared+`.naturalWidth === 240`, 10*time.Second)
		b.waitFor("scrolled to the newest", `(l => l.scrollHeight - l.scrollTop - l.clientHeight < 2)(document.querySelector(".messages:not([hidden])"))`, 5*time.Second)
	}
	if alt := eval[string](ben, shared+`.alt`); alt != "sunset.png" {
		t.Errorf("image alt %q, want sunset.png", alt)
	}
	// A file that is not an image is a readable download.
	txt := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(txt, []byte("some notes\n"), 0o644)
	ana.do("attach text", chromedp.SetUploadFiles(chromedp.ID("file"), []string{txt}))
	ben.waitFor("the text file", `[...document.querySelectorAll(".messages .file")].map(e => e.textContent).includes("notes.txt Text, 11 B")`, 10*time.Second)
	ben.say("Lovely!")
	ana.waitText("Lovely!")

	// Two rooms on one connection: Ana and Ben both join "other"; what
	// Ben says there is unread for Ana, who looks at the lobby, until she
	// switches rooms, without a reload.
	for _, b := range []*tab{ben, ana} {
		b.do("join other",
			chromedp.Click(chromedp.ID("all-rooms")),
			chromedp.WaitVisible(chromedp.ID("room")),
			chromedp.SendKeys(chromedp.ID("room"), "other"),
			chromedp.Click(chromedp.CSS("#goto-form button")),
			chromedp.WaitVisible(chromedp.ID("text")),
		)
		b.waitFor("in other", `location.pathname === "/r/other"`, 5*time.Second)
	}
	ana.waitFor("both in other", presence+` === "Ana,Ben"`, 10*time.Second)
	ana.do("back to the lobby", chromedp.Click(chromedp.CSS(`#my-rooms button[data-room="lobby"]`)))
	ana.waitFor("the lobby", `location.pathname === "/r/lobby"`, 5*time.Second)
	eval[bool](ana, `window.sameDocument = true`)
	ben.say("psst, in other")
	ben.say("still in other")
	ana.waitFor("2 unread in other", unread+` === "lobby:0,other:2"`, 10*time.Second)
	if title := eval[string](ana, `document.title`); title != "(2) lobby · wsroom chat" {
		t.Errorf("Ana's title %q, want (2) lobby · wsroom chat", title)
	}
	img := ana.screenshot(shots, "unread.png")
	if out := os.Getenv("CHAT_SCREENSHOT"); out != "" {
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ana.do("switch to other", chromedp.Click(chromedp.CSS(`#my-rooms button[data-room="other"]`)))
	ana.waitText("still in other")
	ana.waitFor("read", unread+` === "lobby:0,other:0"`, 5*time.Second)
	if title := eval[string](ana, `document.title`); title != "other · wsroom chat" {
		t.Errorf("Ana's title %q, want other · wsroom chat", title)
	}
	if !eval[bool](ana, `window.sameDocument === true`) {
		t.Error("switching rooms reloaded the page")
	}
	if got := eval[[]string](ana, texts); !slices.Equal(got, []string{"psst, in other", "still in other"}) {
		t.Errorf("other shows %q, want its own messages only", got)
	}
	if n := eval[int](ana, `window.chat.client.rooms.size`); n != 2 {
		t.Errorf("Ana's client is in %d rooms, want 2", n)
	}
	ben.do("back to the lobby", chromedp.Click(chromedp.CSS(`#my-rooms button[data-room="lobby"]`)))
	ana.do("back to the lobby", chromedp.Click(chromedp.CSS(`#my-rooms button[data-room="lobby"]`)))

	// A reload shows the history, once.
	ben.waitFor("the lobby", `location.pathname === "/r/lobby"`, 5*time.Second)
	before := eval[[]string](ben, texts)
	ben.do("reload", chromedp.Reload())
	ben.waitConnected()
	ben.waitFor("history", texts+`.length === `+fmt.Sprint(len(before)), 10*time.Second)
	after := eval[[]string](ben, texts)
	if strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("after reload Ben sees %q, want %q", after, before)
	}
	ben.waitFor("the image after reload", shared+` && `+shared+`.naturalWidth === 240`, 10*time.Second)
	ana.waitFor("Ben back", presence+` === "Ana,Ben"`, 10*time.Second)
	// Ana reloads: the history of the room she is not looking at is not
	// unread.
	ana.do("reload", chromedp.Reload())
	ana.waitConnected()
	ana.waitFor("Ana's rooms", `[...document.querySelectorAll("#my-rooms button")].length === 2 && window.chat.rooms.get("other").list.querySelectorAll(".msg").length === 2`, 10*time.Second)
	if u := eval[string](ana, unread); u != "lobby:0,other:0" {
		t.Errorf("after a reload Ana's unread counts are %q, want none", u)
	}

	// Ben loses his connection while Ana and he write: his page says so,
	// reconnects with backoff, resumes, shows what he missed once, and
	// sends what he wrote meanwhile, once.
	g.block("Ben", true)
	kick(t, s, "lobby", "Ben")
	ben.waitFor("reconnecting", `document.getElementById("status").dataset.state === "reconnecting"`, 5*time.Second)
	ben.waitFor("connection lost mark", `!!document.querySelector(".messages:not([hidden]) .note.lost")`, 5*time.Second)
	ana.say("while you were away 1")
	ben.say("written offline 1")
	ben.say("written offline 2")
	ben.waitFor("two waiting", `document.querySelectorAll(".messages:not([hidden]) .msg.pending").length === 2`, 5*time.Second)
	ana.say("while you were away 2")
	ana.waitText("while you were away 2")
	if eval[bool](ben, texts+`.includes("while you were away 1")`) {
		t.Fatal("Ben got a message while disconnected")
	}
	g.block("Ben", false)
	ben.waitConnected()
	ben.waitText("while you were away 2")
	ana.waitText("written offline 2")
	ben.waitFor("nothing waiting", `document.querySelectorAll(".msg.pending").length === 0`, 10*time.Second)
	ben.waitFor("back mark", `!!document.querySelector(".messages:not([hidden]) .note.back")`, 5*time.Second)
	want = eval[[]string](ana, texts)
	if got := eval[[]string](ben, texts); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after resuming Ben sees %q, want %q", got, want)
	}
	for _, text := range []string{"written offline 1", "written offline 2"} {
		if n := strings.Count(strings.Join(want, "\n"), text); n != 1 {
			t.Errorf("Ana sees %q %d times, want once", text, n)
		}
	}
	if g.handshakes("Ben") < 3 {
		t.Errorf("Ben's handshakes: %d; want some refused ones before the resume", g.handshakes("Ben"))
	}

	// A second tab of Ben's: a bad room name is explained, then the same
	// person is in the room from two tabs under one name.
	other := newTab(t, ben.ctx, "Ben (second tab)")
	other.do("bad room", chromedp.Navigate(ts.URL+"/r/no%20spaces"))
	other.waitFor("bad room message", `(document.getElementById("page-error") || {}).textContent === `+
		js(`"no spaces" is not a valid room name: a room name is 1 to 64 letters, digits, '-', '_' or '.', and does not start with '.'.`), 5*time.Second)
	other.do("lobby", chromedp.Navigate(ts.URL+"/"))
	other.waitFor("room list", `[...document.querySelectorAll("#rooms li")].map(e => e.textContent).join() === "lobby 2 here,other 2 here"`, 10*time.Second)
	other.screenshot(shots, "lobby.png")
	other.do("bad room in the form",
		chromedp.SendKeys(chromedp.ID("room"), ".hidden"),
		chromedp.Click(chromedp.CSS("#goto-form button")),
	)
	other.waitFor("form error", `document.getElementById("room-error").textContent.includes("is not a valid room name")`, 5*time.Second)
	other.do("the lobby from the list", chromedp.Click(chromedp.CSS(`#rooms a[href="/r/lobby"]`)))
	other.waitFor("no stale error", `document.getElementById("room-error").hidden && document.getElementById("chat-error").hidden`, 5*time.Second)
	other.waitText("while you were away 2")
	ana.say("to both of Ben's tabs")
	ben.waitText("to both of Ben's tabs")
	other.waitText("to both of Ben's tabs")
	for _, b := range []*tab{ana, other} {
		if p := eval[string](b, presence); p != "Ana,Ben" {
			t.Errorf("%s: presence %q, want Ana,Ben (Ben once)", b.name, p)
		}
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
	dee.waitFor("Dee in", presence+` === "Dee"`, 5*time.Second)
	dee2 := newTab(t, browser, "another Dee", chromedp.WithNewBrowserContext())
	dee2.do("same name",
		chromedp.Navigate(ts2.URL+"/r/lobby"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("name"), "dee"),
		chromedp.SendKeys(chromedp.ID("token"), "s3cret"),
		chromedp.Click(chromedp.CSS("#signin-form button")),
	)
	dee2.waitFor("name taken message", `document.getElementById("signin-error").textContent === "Someone in lobby is already called dee"`, 5*time.Second)
	if v := eval[string](dee2, views); v != "signin" {
		t.Errorf("refused sign-in shows %q, want signin only", v)
	}

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
// trouble: it refuses the handshakes of some names, and counts them.
type gate struct {
	next http.Handler

	mu      sync.Mutex
	blocked map[string]bool
	tries   map[string]int // name → handshakes
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/ws" {
		name := r.URL.Query().Get("name")
		g.mu.Lock()
		blocked := g.blocked[name]
		if g.tries == nil {
			g.tries = make(map[string]int)
		}
		g.tries[name]++
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

func (g *gate) handshakes(name string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tries[name]
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

// On a phone (390×450) the messages get most of the screen, and a page
// scrolled up offers to jump to the newest message.
func TestBrowserPhone(t *testing.T) {
	browser := startBrowser(t)
	_, ts := newTestServer(t, Options{RateLimit: 1000, RateBurst: 1000})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	for i := range 30 {
		ana.say(fmt.Sprintf("message %d, long enough to take a line or two on a phone", i))
	}
	for range 30 {
		ana.next("msg")
	}

	ben := newTab(t, browser, "Ben", chromedp.WithNewBrowserContext())
	ben.do("phone", chromedp.EmulateViewport(390, 450))
	ben.signIn(ts.URL+"/r/lobby", "Ben")
	ben.waitFor("history", texts+`.length === 30`, 10*time.Second)
	const list = `document.querySelector(".messages:not([hidden])")`
	ben.waitFor("at the newest", `(l => l.scrollHeight - l.scrollTop - l.clientHeight < 2)(`+list+`)`, 5*time.Second)
	if h := eval[float64](ben, list+`.getBoundingClientRect().height`); h < 0.5*450 {
		t.Errorf("the messages are %.0f px high on a 450 px screen, want at least half", h)
	}
	if w := eval[float64](ben, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("the page is %.0f px wide on a 390 px screen", w)
	}
	if v := eval[string](ben, views); v != "chat" {
		t.Errorf("the page shows %q, want chat only", v)
	}
	ben.screenshot(shotsDir(t), "phone.png")

	const jump = `getComputedStyle(document.getElementById("jump")).display !== "none"`
	if eval[bool](ben, jump) {
		t.Error("jump button shown at the newest message")
	}
	eval[float64](ben, list+`.scrollTop = 0`)
	ben.waitFor("jump button", jump, 5*time.Second)
	ana.say("new while Ben reads old ones")
	ben.waitText("new while Ben reads old ones")
	if eval[bool](ben, `(l => l.scrollHeight - l.scrollTop - l.clientHeight < 2)(`+list+`)`) {
		t.Error("a new message scrolled Ben away from what he reads")
	}
	ben.do("jump", chromedp.Click(chromedp.ID("jump")))
	ben.waitFor("at the newest again", `(l => l.scrollHeight - l.scrollTop - l.clientHeight < 2)(`+list+`) && !(`+jump+`)`, 5*time.Second)
	ben.checkProblems()
}

// shotsDir is where screenshots go: $CHAT_SHOTS, to look at them after the
// test, or a temporary directory.
func shotsDir(t *testing.T) string {
	if d := os.Getenv("CHAT_SHOTS"); d != "" {
		return d
	}
	return t.TempDir()
}

// failover is a front for several nodes: it sends each request to the
// first node that is not marked dead, as a load balancer would.
type failover struct {
	mu    sync.Mutex
	nodes []*url.URL
	dead  map[int]bool
}

func (f *failover) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	var target *url.URL
	for i, u := range f.nodes {
		if !f.dead[i] {
			target = u
			break
		}
	}
	f.mu.Unlock()
	if target == nil {
		http.Error(w, "no node", http.StatusBadGateway)
		return
	}
	httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
}

func (f *failover) markDead(i int) {
	f.mu.Lock()
	f.dead[i] = true
	f.mu.Unlock()
}

// A page on node A and one on node B of a Redis-backed pair see each
// other's messages and presence; when node A dies, its page moves to B
// and misses nothing, and gets nothing twice.
func TestBrowserNodes(t *testing.T) {
	nodes := newRedisNodes(t, 2)
	browser := startBrowser(t)
	var urls []*url.URL
	for _, n := range nodes {
		u, err := url.Parse(n.ts.URL)
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, u)
	}
	front := &failover{nodes: urls, dead: make(map[int]bool)}
	fts := httptest.NewServer(front)
	t.Cleanup(fts.Close)

	ana := newTab(t, browser, "Ana (node A)", chromedp.WithNewBrowserContext())
	ben := newTab(t, browser, "Ben (node B)", chromedp.WithNewBrowserContext())
	ana.signIn(fts.URL+"/r/lobby", "Ana")
	ben.signIn(nodes[1].ts.URL+"/r/lobby", "Ben")
	for _, b := range []*tab{ana, ben} {
		b.waitFor("presence of both", presence+` === "Ana,Ben"`, 10*time.Second)
	}
	ana.say("from node A")
	ben.waitText("from node A")
	ben.say("from node B")
	ana.waitText("from node B")

	// The page may be back on node B before a poll sees it reconnecting:
	// it records leaving the connected state when it happens.
	eval[bool](ana, `(() => {
		const s = document.getElementById("status");
		window.wasDown = false;
		new MutationObserver(() => { if (s.dataset.state !== "connected") window.wasDown = true; }).observe(s, {attributes: true});
		return true;
	})()`)
	front.markDead(0)
	nodes[0].kill()
	ana.waitFor("reconnecting", `window.wasDown === true`, 5*time.Second)
	ben.say("while Ana moves")
	ana.waitConnected()
	ben.say("after the move")
	ana.waitText("after the move")
	ana.say("Ana from node B")
	ben.waitText("Ana from node B")
	// Ana's own message shows once it comes back numbered from the room.
	ana.waitFor("her own message back", `document.querySelectorAll(".messages:not([hidden]) .msg[data-seq]").length === 5`, 10*time.Second)
	for _, b := range []*tab{ana, ben} {
		b.waitFor("presence of both after the move", presence+` === "Ana,Ben"`, 10*time.Second)
	}
	want := []string{"from node A", "from node B", "while Ana moves", "after the move", "Ana from node B"}
	for _, b := range []*tab{ana, ben} {
		if got := eval[[]string](b, texts); !slices.Equal(got, want) {
			t.Errorf("%s sees %q, want %q", b.name, got, want)
		}
		if seqs := eval[string](b, `[...document.querySelectorAll(".messages:not([hidden]) .msg[data-seq]")].map(e => e.dataset.seq).join()`); seqs != "1,2,3,4,5" {
			t.Errorf("%s has messages %s, want 1 to 5", b.name, seqs)
		}
	}
	ana.checkProblems()
	ben.checkProblems()
}

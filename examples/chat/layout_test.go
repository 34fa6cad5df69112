package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
)

// Layout tests: each drives the page in Chromium at a desktop (1280×800)
// or phone (390×844) size and checks what is drawn, by computed style and
// geometry.

type screen struct {
	name          string
	width, height int64
}

var (
	desktop = screen{"desktop", 1280, 800}
	phone   = screen{"phone", 390, 844}
)

// rect is an element's box on the screen.
type rect struct {
	Top, Bottom, Left, Right, Width, Height float64
}

func (b *tab) rect(sel string) rect {
	b.t.Helper()
	return eval[rect](b, `(r => ({Top: r.top, Bottom: r.bottom, Left: r.left, Right: r.right, Width: r.width, Height: r.height}))(document.querySelector(`+js(sel)+`).getBoundingClientRect())`)
}

// visible reports whether the element is drawn: displayed, not hidden,
// with a box of some size, within the screen's width.
func (b *tab) visible(sel string) bool {
	b.t.Helper()
	return eval[bool](b, `(e => {
		if (!e) return false;
		const s = getComputedStyle(e), r = e.getBoundingClientRect();
		return s.display !== "none" && s.visibility !== "hidden" && Number(s.opacity) > 0 &&
			r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= document.documentElement.clientWidth;
	})(document.querySelector(`+js(sel)+`))`)
}

// shiftEnter presses Shift+Enter in the message box, which starts a new
// line.
var shiftEnter = chromedp.Steps(
	chromedp.Focus(chromedp.ID("text")),
	chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeKeyDown, input.DispatchKeyEventTypeKeyUp} {
			ev := input.DispatchKeyEventParams{Type: typ, Modifiers: 8 /* Shift */, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13}
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

// typeLines types lines in the message box, with Shift+Enter between them.
func (b *tab) typeLines(lines ...string) {
	b.t.Helper()
	for i, line := range lines {
		if i > 0 {
			b.do("shift+enter", shiftEnter)
		}
		b.do("type "+line, chromedp.SendKeys(chromedp.ID("text"), line))
	}
}

// box is the message box's geometry and scroll state.
type box struct {
	Height, ClientHeight, ScrollHeight, ScrollTop float64
	Lines                                         int
}

func (b *tab) box() box {
	b.t.Helper()
	return eval[box](b, `(e => ({Height: e.getBoundingClientRect().height, ClientHeight: e.clientHeight,
		ScrollHeight: e.scrollHeight, ScrollTop: e.scrollTop, Lines: e.value.split("\n").length}))(document.getElementById("text"))`)
}

// The message box grows with what is typed, every line in view, up to a
// bound; beyond it, it scrolls and keeps the caret's line in view; sending
// shrinks it back.
func TestBrowserComposerGrows(t *testing.T) {
	browser := startBrowser(t)
	_, ts := newTestServer(t, Options{})
	for _, sc := range []screen{desktop, phone} {
		t.Run(sc.name, func(t *testing.T) {
			b := newTab(t, browser, "Ana on "+sc.name, chromedp.WithNewBrowserContext())
			b.t = t
			b.do("screen", chromedp.EmulateViewport(sc.width, sc.height))
			b.signIn(ts.URL+"/r/lobby", "Ana")
			one := b.box()

			b.typeLines("first line", "second line", "third line")
			three := b.box()
			t.Logf("one line: %+v; three lines: %+v", one, three)
			if three.Lines != 3 {
				t.Fatalf("the box holds %d lines, want 3", three.Lines)
			}
			if three.ScrollHeight > three.ClientHeight+1 || three.ScrollTop > 0 {
				t.Errorf("three lines: the box is %.0f px high and shows %.0f of its %.0f px, scrolled by %.0f: lines are cut off",
					three.Height, three.ClientHeight, three.ScrollHeight, three.ScrollTop)
			}
			if three.Height < one.Height+30 {
				t.Errorf("three lines: the box is %.0f px high, one line %.0f: it did not grow", three.Height, one.Height)
			}

			var more []string
			for i := range 15 {
				more = append(more, fmt.Sprintf("more %d", i))
			}
			b.do("shift+enter", shiftEnter)
			b.typeLines(more...)
			many := b.box()
			t.Logf("18 lines: %+v", many)
			if many.Height > 0.35*float64(sc.height) {
				t.Errorf("18 lines: the box is %.0f px high on a %d px screen, want a bound", many.Height, sc.height)
			}
			if many.ScrollHeight <= many.ClientHeight {
				t.Errorf("18 lines: the box shows all %.0f px; want it bounded and scrolling", many.ScrollHeight)
			}
			if many.ScrollTop+many.ClientHeight < many.ScrollHeight-12 { // within half a line
				t.Errorf("18 lines: scrolled to %.0f of %.0f: the caret's line is not in view", many.ScrollTop+many.ClientHeight, many.ScrollHeight)
			}
			if s := eval[string](b, `getComputedStyle(document.getElementById("text")).overflowY`); s != "auto" && s != "scroll" {
				t.Errorf("18 lines: overflow-y %q, want the box to scroll", s)
			}
			if w := eval[float64](b, `document.documentElement.scrollWidth`); w > float64(sc.width) {
				t.Errorf("the page is %.0f px wide on a %d px screen", w, sc.width)
			}

			b.do("send", pressEnter)
			b.waitText("first line\nsecond line\nthird line\nmore 0\nmore 1\nmore 2\nmore 3\nmore 4\nmore 5\nmore 6\nmore 7\nmore 8\nmore 9\nmore 10\nmore 11\nmore 12\nmore 13\nmore 14")
			if after := b.box(); after.Height > one.Height+1 {
				t.Errorf("after sending: the box is %.0f px high, want %.0f as before", after.Height, one.Height)
			}
			b.checkProblems()
		})
	}
}

// bar is the header's geometry: its height, and the boxes of the status
// and of "Change name".
type bar struct {
	Height         float64
	Status, Rename rect
}

func (b *tab) bar() bar {
	b.t.Helper()
	return bar{Height: b.rect(".bar").Height, Status: b.rect("#status"), Rename: b.rect("#rename")}
}

// On a phone, the header keeps its one line while the page reconnects:
// "Change name" stays where it was, and nothing below moves.
func TestBrowserStatusSteady(t *testing.T) {
	browser := startBrowser(t)
	s, err := NewServer(Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{next: s, blocked: make(map[string]bool)}
	ts := httptest.NewServer(g)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { s.Close() })

	ben := newTab(t, browser, "Ben", chromedp.WithNewBrowserContext())
	ben.do("phone", chromedp.EmulateViewport(phone.width, phone.height))
	ben.signIn(ts.URL+"/r/lobby", "Ben")
	before := ben.bar()
	timeline := ben.rect(".messages:not([hidden])")

	g.block("Ben", true)
	kick(t, s, "lobby", "Ben")
	ben.waitFor("the next try's countdown", `document.getElementById("status").textContent.includes("next try")`, 10*time.Second)
	during := ben.bar()
	t.Logf("connected: %+v; reconnecting (%q): %+v", before, eval[string](ben, `document.getElementById("status").textContent`), during)
	if during.Height != before.Height {
		t.Errorf("reconnecting: the header is %.0f px high, %.0f when connected", during.Height, before.Height)
	}
	if during.Rename != before.Rename {
		t.Errorf("reconnecting: Change name moved from %+v to %+v", before.Rename, during.Rename)
	}
	if !ben.visible("#rename") || !ben.visible("#status") {
		t.Errorf("reconnecting: Change name visible %v, status visible %v; want both", ben.visible("#rename"), ben.visible("#status"))
	}
	if during.Status.Top != during.Rename.Top && during.Status.Bottom <= during.Rename.Top {
		t.Errorf("reconnecting: the status (%+v) is on another line than Change name (%+v)", during.Status, during.Rename)
	}
	if now := ben.rect(".messages:not([hidden])"); now.Top != timeline.Top {
		t.Errorf("reconnecting: the messages moved from %.0f to %.0f px", timeline.Top, now.Top)
	}
	if w := eval[float64](ben, `document.documentElement.scrollWidth`); w > float64(phone.width) {
		t.Errorf("reconnecting: the page is %.0f px wide", w)
	}
	g.block("Ben", false)
	ben.waitConnected()
	ben.checkProblems()
}

// "X joined" comes after the history, in time order: not for those who
// were there before, and never above older messages, on joining and after
// a reload.
func TestBrowserJoinNotes(t *testing.T) {
	browser := startBrowser(t)
	_, ts := newTestServer(t, Options{})
	ana := dial(t, ts, "lobby", "Ana")
	ana.waitPresence("Ana")
	for _, text := range []string{"one", "two", "three"} {
		ana.say(text)
		ana.next("msg")
	}
	ben := newTab(t, browser, "Ben", chromedp.WithNewBrowserContext())
	ben.do("screen", chromedp.EmulateViewport(desktop.width, desktop.height))

	// notesAbove lists the notes drawn above the history's last message.
	const notesAbove = `(() => {
		const list = document.querySelector(".messages:not([hidden])");
		const msgs = [...list.querySelectorAll(".msg")].filter(m => m.textContent.endsWith("three"));
		if (msgs.length !== 1) return ["(history not shown)"];
		const last = msgs[0].getBoundingClientRect();
		return [...list.querySelectorAll(".note")].filter(n => n.getBoundingClientRect().top < last.bottom).map(n => n.textContent);
	})()`
	check := func(when string) {
		t.Helper()
		ben.waitText("three")
		ben.waitFor("presence", presence+` === "Ana,Ben"`, 10*time.Second)
		if above := eval[[]string](ben, notesAbove); len(above) > 0 {
			t.Errorf("%s: %q above the history", when, above)
		}
	}
	ben.signIn(ts.URL+"/r/lobby", "Ben")
	check("on joining")
	ben.do("reload", chromedp.Reload())
	ben.waitConnected()
	check("after a reload")

	cy := dial(t, ts, "lobby", "Cy")
	cy.waitPresence("Ana", "Ben", "Cy")
	ben.waitFor("Cy joined", `[...document.querySelectorAll(".messages:not([hidden]) .note")].some(n => n.textContent === "Cy joined")`, 10*time.Second)
	if above := eval[[]string](ben, notesAbove); len(above) > 0 {
		t.Errorf("after Cy joined: %q above the history", above)
	}
	if !ben.visible(".messages:not([hidden]) .note:last-child") || eval[string](ben, `document.querySelector(".messages:not([hidden]) .note:last-child").textContent`) != "Cy joined" {
		t.Error("Cy joined is not the last thing shown")
	}
	ben.checkProblems()
}

// With a name someone else has in the room, the room is not usable: the
// message box and its buttons are disabled, nobody is shown as here, and a
// button next to the reason picks another name, which then joins.
func TestBrowserNameTaken(t *testing.T) {
	browser := startBrowser(t)
	_, ts := newTestServer(t, Options{})
	dee := dial(t, ts, "busy", "Dee")
	dee.waitPresence("Dee")

	for _, sc := range []screen{desktop, phone} {
		t.Run(sc.name, func(t *testing.T) {
			b := newTab(t, browser, "another Dee on "+sc.name, chromedp.WithNewBrowserContext())
			b.t = t
			b.do("screen", chromedp.EmulateViewport(sc.width, sc.height))
			b.signIn(ts.URL+"/r/lobby", "dee")
			b.do("go to busy",
				chromedp.Click(chromedp.ID("home")),
				chromedp.WaitVisible(chromedp.ID("room")),
				chromedp.SendKeys(chromedp.ID("room"), "busy"),
				chromedp.Click(chromedp.CSS("#goto-form button")),
			)
			b.waitFor("the refusal", `document.getElementById("chat-error").textContent.includes("already called")`, 10*time.Second)
			b.screenshot(shotsDir(t), "taken-"+sc.name+".png")

			for _, sel := range []string{"#text", "#send-form button[type=submit]", "#file"} {
				if !eval[bool](b, `document.querySelector(`+js(sel)+`).matches(":disabled")`) {
					t.Errorf("%s is enabled in a room the name is refused in", sel)
				}
			}
			if b.visible("#people") {
				t.Errorf("the room shows who is here (%q) though it was not joined", eval[string](b, `document.getElementById("people").textContent.trim()`))
			}
			if !b.visible("#chat-error") {
				t.Error("the reason is not shown")
			}
			const pick = "#pick-name"
			if !b.visible(pick) {
				t.Fatal("no visible button to pick another name")
			}
			reason, button := b.rect("#chat-error"), b.rect(pick)
			if button.Top > reason.Bottom+60 || button.Bottom < reason.Top-60 {
				t.Errorf("the button (%+v) is far from the reason (%+v)", button, reason)
			}
			if text := eval[string](b, `document.querySelector(`+js(pick)+`).textContent`); !strings.Contains(text, "Pick another name") {
				t.Errorf("the button says %q", text)
			}

			b.do("pick another name", chromedp.Click(chromedp.CSS(pick)))
			b.waitFor("the sign-in form", views+` === "signin"`, 5*time.Second)
			eval[string](b, `document.getElementById("name").value = ""`)
			b.do("another name",
				chromedp.SendKeys(chromedp.ID("name"), "Dee "+sc.name),
				chromedp.Click(chromedp.CSS("#signin-form button")),
			)
			b.waitConnected()
			b.waitFor("in busy", `location.pathname === "/r/busy" && `+presence+` === "Dee,Dee `+sc.name+`"`, 10*time.Second)
			if eval[bool](b, `document.getElementById("text").matches(":disabled")`) || b.visible(pick) || b.visible("#chat-error") {
				t.Error("the room is still shown as refused after joining")
			}
			b.checkProblems()
		})
	}
}

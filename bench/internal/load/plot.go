package load

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one run to plot, under a name.
type Series struct {
	Name   string
	Result *Result
}

var palette = []color.RGBA{
	{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255},
	{255, 127, 14, 255}, {148, 103, 189, 255}, {140, 86, 75, 255},
}

// WritePlot draws two charts as a PNG: achieved against target deliveries/s
// (log-log, the diagonal is a perfect server) and p99 latency against target
// (log-log, the dashed line is the 250 ms limit), one line per series.
func WritePlot(w io.Writer, series []Series) error {
	const W, H, pw, ph = 1000, 480, 380, 340
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range series {
		for _, st := range s.Result.Steps {
			lo, hi = min(lo, st.Target), max(hi, st.Target)
		}
	}
	if math.IsInf(lo, 1) {
		return fmt.Errorf("nothing to plot")
	}
	xr := axis{math.Log10(lo) - 0.1, math.Log10(hi) + 0.1}
	left := panel{img: img, x0: 80, y0: 60, w: pw, h: ph, xr: xr, yr: xr}
	right := panel{img: img, x0: 590, y0: 60, w: pw, h: ph, xr: xr, yr: axis{-5, 0.5}} // 10 µs .. 3 s
	left.frame("achieved deliveries/s", "target deliveries/s", rateLabel)
	right.frame("p99 latency", "target deliveries/s", latencyLabel)
	left.line(xr.lo, xr.lo, xr.hi, xr.hi, color.RGBA{180, 180, 180, 255}, true)
	lim := math.Log10(0.25)
	right.line(xr.lo, lim, xr.hi, lim, color.RGBA{200, 0, 0, 255}, true)
	for i, s := range series {
		c := palette[i%len(palette)]
		var px, py, qx, qy float64
		for j, st := range s.Result.Steps {
			x := math.Log10(st.Target)
			y1 := math.Log10(max(st.Achieved, 1))
			y2 := math.Log10(max(st.Latency.P99.Seconds(), 1e-6))
			if j > 0 {
				left.line(px, py, x, y1, c, false)
				right.line(qx, qy, x, y2, c, false)
			}
			left.dot(x, y1, c)
			right.dot(x, y2, c)
			px, py, qx, qy = x, y1, x, y2
		}
		text(img, 80+(i%6)*150, 444+(i/6)*16, s.Name, c)
	}
	return png.Encode(w, img)
}

// latencyLabel names a power of ten of seconds in ASCII: 10us, 1ms, 1s.
func latencyLabel(e float64) string {
	d := time.Duration(math.Round(math.Pow(10, e) * 1e9))
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.0fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%dms", d/time.Millisecond)
	}
	return fmt.Sprintf("%dus", d/time.Microsecond)
}

type axis struct{ lo, hi float64 }

type panel struct {
	img    *image.RGBA
	x0, y0 int
	w, h   int
	xr, yr axis
}

func (p panel) at(x, y float64) (int, int) {
	px := p.x0 + int(float64(p.w)*(x-p.xr.lo)/(p.xr.hi-p.xr.lo))
	py := p.y0 + p.h - int(float64(p.h)*(y-p.yr.lo)/(p.yr.hi-p.yr.lo))
	return px, py
}

func (p panel) frame(title, xlabel string, label func(float64) string) {
	grey, black := color.RGBA{225, 225, 225, 255}, color.RGBA{0, 0, 0, 255}
	for e := math.Ceil(p.yr.lo); e <= p.yr.hi; e++ {
		_, y := p.at(p.xr.lo, e)
		for x := p.x0; x <= p.x0+p.w; x++ {
			p.img.Set(x, y, grey)
		}
		text(p.img, p.x0-70, y+4, label(e), black)
	}
	for e := math.Ceil(p.xr.lo); e <= p.xr.hi; e++ {
		x, _ := p.at(e, p.yr.lo)
		for y := p.y0; y <= p.y0+p.h; y++ {
			p.img.Set(x, y, grey)
		}
		text(p.img, x-12, p.y0+p.h+16, rateLabel(e), black)
	}
	for x := p.x0; x <= p.x0+p.w; x++ {
		p.img.Set(x, p.y0, black)
		p.img.Set(x, p.y0+p.h, black)
	}
	for y := p.y0; y <= p.y0+p.h; y++ {
		p.img.Set(p.x0, y, black)
		p.img.Set(p.x0+p.w, y, black)
	}
	text(p.img, p.x0, p.y0-12, title, black)
	text(p.img, p.x0+p.w/2-60, p.y0+p.h+34, xlabel, black)
}

func rateLabel(e float64) string { return FormatRate(math.Round(math.Pow(10, e))) }

func (p panel) line(x1, y1, x2, y2 float64, c color.Color, dashed bool) {
	ax, ay := p.at(x1, y1)
	bx, by := p.at(x2, y2)
	n := max(abs(bx-ax), abs(by-ay), 1)
	for i := 0; i <= n; i++ {
		if dashed && (i/6)%2 == 1 {
			continue
		}
		x := ax + (bx-ax)*i/n
		y := ay + (by-ay)*i/n
		if image.Pt(x, y).In(image.Rect(p.x0, p.y0, p.x0+p.w+1, p.y0+p.h+1)) {
			p.img.Set(x, y, c)
			p.img.Set(x, y+1, c)
		}
	}
}

func (p panel) dot(x, y float64, c color.Color) {
	cx, cy := p.at(x, y)
	for dx := -3; dx <= 3; dx++ {
		for dy := -3; dy <= 3; dy++ {
			if dx*dx+dy*dy <= 9 && image.Pt(cx+dx, cy+dy).In(image.Rect(p.x0, p.y0, p.x0+p.w+1, p.y0+p.h+1)) {
				p.img.Set(cx+dx, cy+dy, c)
			}
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// Package page renders the farm's page (/farm on the cache server): a
// leaderboard of owners and builders, and the live build sets with their
// progress. It is rendered on the server and reads without JavaScript; a
// meta refresh keeps it live.
package page

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/queue"
)

// Source is what the page shows: the farm's work over a window and the
// recent build sets. FromConn reads them from NATS.
type Source interface {
	Stats(ctx context.Context, since time.Time) (*farm.Stats, error)
	Sets(ctx context.Context, since time.Time) ([]farm.Summary, error)
}

// FromConn is the Source of tenant's farm on conn.
func FromConn(conn *queue.Conn, tenant string) Source { return &connSource{conn: conn, tenant: tenant} }

type connSource struct {
	conn   *queue.Conn
	tenant string
}

func (c *connSource) Stats(ctx context.Context, since time.Time) (*farm.Stats, error) {
	return farm.ReadStats(ctx, c.conn, c.tenant, since)
}

func (c *connSource) Sets(ctx context.Context, since time.Time) ([]farm.Summary, error) {
	return farm.Summaries(ctx, c.conn, c.tenant, since)
}

// Defaults of Options.
const (
	DefaultWindow   = 7 * 24 * time.Hour
	DefaultRefresh  = 15 * time.Second
	DefaultCacheFor = 5 * time.Second
	// renderTimeout bounds the reads behind one rendering.
	renderTimeout = 20 * time.Second
)

// Options configure Handler. Zero values take the defaults.
type Options struct {
	// Window is how far back the leaderboard counts and sets are shown.
	Window time.Duration
	// Refresh is how often the browser reloads the page.
	Refresh time.Duration
	// CacheFor is how long one rendering serves every visitor: the reads
	// behind it are not free.
	CacheFor time.Duration
	Logger   *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

//go:embed page.html.tmpl
var files embed.FS

var tmpl = template.Must(template.New("page.html.tmpl").Funcs(template.FuncMap{
	"hours": func(s float64) string { return fmt.Sprintf("%.2f", s/3600) },
	"pct": func(n, total int) string {
		if total <= 0 {
			return "0"
		}
		return fmt.Sprintf("%.1f", float64(n)*100/float64(total))
	},
	// rank is 1-based; the first three get a medal's colour (CSS:
	// emoji fonts are not everywhere).
	"rank": func(i int) int { return i + 1 },
	"medal": func(i int) string {
		if i < 3 {
			return [...]string{"gold", "silver", "bronze"}[i]
		}
		return ""
	},
	"span": span,
	"agree": func(t farm.Tally) string {
		if r := t.AgreementRate(); r >= 0 {
			return fmt.Sprintf("%.0f%%", r*100)
		}
		return "–"
	},
	"ago":    func(now, t time.Time) string { return now.Sub(t).Round(time.Second).String() },
	"status": func(s farm.Status) string { return string(s) },
	"count":  func(s farm.Summary, st string) int { return s.Counts[farm.Status(st)] },
}).ParseFS(files, "page.html.tmpl"))

// span says a window the way people do: "7 days", else "36h0m0s".
func span(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		if n := int(d / (24 * time.Hour)); n > 1 {
			return fmt.Sprintf("%d days", n)
		}
		return "day"
	}
	return d.String()
}

// view is what the template gets.
type view struct {
	Now      time.Time
	Window   time.Duration
	Refresh  int
	Stats    *farm.Stats
	Sets     []farm.Summary
	MaxBuild int
	Statuses []farm.Status
}

// Handler serves the page at any path it is mounted on (GET and HEAD).
func Handler(src Source, o Options) http.Handler {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Refresh <= 0 {
		o.Refresh = DefaultRefresh
	}
	if o.CacheFor <= 0 {
		o.CacheFor = DefaultCacheFor
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &handler{src: src, o: o}
}

type handler struct {
	src Source
	o   Options

	mu       sync.Mutex
	page     []byte
	rendered time.Time
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	b, err := h.render(r.Context())
	if err != nil {
		h.o.Logger.Warn("farm page", "err", err)
		http.Error(w, "the farm's state cannot be read now", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(h.o.CacheFor.Seconds())))
	w.Write(b)
}

// render returns the page, rendered again when the last one is older
// than CacheFor. Only a success is kept.
func (h *handler) render(ctx context.Context) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.o.Now()
	if h.page != nil && now.Sub(h.rendered) < h.o.CacheFor {
		return h.page, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), renderTimeout)
	defer cancel()
	since := now.Add(-h.o.Window)
	stats, err := h.src.Stats(ctx, since)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	sets, err := h.src.Sets(ctx, since)
	if err != nil {
		return nil, fmt.Errorf("build sets: %w", err)
	}
	if stats == nil {
		return nil, errors.New("stats: none")
	}
	v := view{Now: now, Window: h.o.Window, Refresh: int(h.o.Refresh.Seconds()), Stats: stats, Sets: sets,
		Statuses: []farm.Status{farm.Done, farm.Dispatched, farm.Waiting, farm.Failed, farm.Blocked}}
	for _, o := range stats.Owners {
		v.MaxBuild = max(v.MaxBuild, o.Builds)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, v); err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	h.page, h.rendered = b.Bytes(), now
	return h.page, nil
}

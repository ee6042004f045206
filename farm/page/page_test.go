package page

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/nardiff"
)

type fakeSource struct {
	stats *farm.Stats
	sets  []farm.Summary
	err   error
	calls atomic.Int32
}

func (f *fakeSource) Stats(context.Context, time.Time) (*farm.Stats, error) {
	f.calls.Add(1)
	return f.stats, f.err
}

func (f *fakeSource) Sets(context.Context, time.Time) ([]farm.Summary, error) { return f.sets, f.err }

// node is an element of the page, as a browser's DOM would hold it.
type node struct {
	name  string
	attrs map[string]string
	text  string
}

// elements parses the page leniently (as HTML) into its elements, each
// with its text content.
func elements(t *testing.T, page string) []*node {
	t.Helper()
	dec := xml.NewDecoder(strings.NewReader(page))
	dec.Strict, dec.AutoClose, dec.Entity = false, xml.HTMLAutoClose, xml.HTMLEntity
	var all, open []*node
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return all
		}
		if err != nil {
			t.Fatalf("page does not parse: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			n := &node{name: tok.Name.Local, attrs: map[string]string{}}
			for _, a := range tok.Attr {
				n.attrs[a.Name.Local] = a.Value
			}
			all, open = append(all, n), append(open, n)
		case xml.EndElement:
			if len(open) > 0 {
				open = open[:len(open)-1]
			}
		case xml.CharData:
			for _, n := range open {
				n.text += string(tok)
			}
		}
	}
}

func withClass(ns []*node, class string) []*node {
	var out []*node
	for _, n := range ns {
		for _, c := range strings.Fields(n.attrs["class"]) {
			if c == class {
				out = append(out, n)
			}
		}
	}
	return out
}

func get(t *testing.T, h http.Handler) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/farm", nil))
	return rec.Code, rec.Body.String()
}

func TestPage(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	created := now.Add(-90 * time.Second)
	causes := map[nardiff.CauseKind]int{nardiff.CauseTimestamp: 2, nardiff.CauseBuildPath: 1}
	src := &fakeSource{
		stats: &farm.Stats{Tenant: "t1",
			Owners: []farm.Tally{{Owner: "alice", Builds: 30, Failures: 1, CPUSeconds: 7200, Agreements: 19, Disagreements: 1, Disputes: 3, Causes: causes}, {Owner: "bob", Builds: 12},
				{Owner: "carol", Builds: 3, Disagreements: 4, Quarantined: true}, {Owner: "<dave>", Builds: 1}},
			Builders: []farm.Tally{{Builder: "alice-1", Owner: "alice", Builds: 30, CPUSeconds: 7200, Disputes: 3, Causes: causes}, {Builder: "bob-1", Owner: "bob", Builds: 12}}},
		sets: []farm.Summary{{Set: &farm.Set{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaa", Size: 10, Quorum: 2, Created: created},
			Counts: map[farm.Status]int{farm.Done: 5, farm.Dispatched: 2, farm.Waiting: 1, farm.Failed: 1, farm.Blocked: 1}, Skipped: 2, Disputed: 1}},
	}
	h := Handler(src, Options{Now: func() time.Time { return now }, CacheFor: time.Minute})
	code, body := get(t, h)
	if code != http.StatusOK {
		t.Fatalf("GET: %d\n%s", code, body)
	}
	els := elements(t, body)

	owners := withClass(els, "owner")
	if len(owners) != 4 {
		t.Fatalf("%d owner rows, want 4", len(owners))
	}
	for i, want := range []string{"gold", "silver", "bronze", ""} {
		m := withClass(els, "medal")[i]
		if strings.TrimSpace(m.text) != fmt.Sprint(i+1) || strings.TrimSpace(strings.TrimPrefix(m.attrs["class"], "medal")) != want {
			t.Errorf("rank %d: %q, class %q; want %d, %q", i, m.text, m.attrs["class"], i+1, want)
		}
	}
	if !strings.Contains(body, "the last 7 days") {
		t.Error("window not said in days")
	}
	if first := owners[0].text; !strings.Contains(first, "alice") || !strings.Contains(first, "30") || !strings.Contains(first, "2.00") || !strings.Contains(first, "95%") {
		t.Errorf("first row %q: want alice, 30 builds, 95%% agreement, 2.00 CPU hours", first)
	}
	if third := owners[2].text; !strings.Contains(third, "quarantined") || !strings.Contains(third, "0%") || strings.Contains(owners[1].text, "quarantined") {
		t.Errorf("rows %q, %q: carol (only) quarantined, 0%% agreement", owners[1].text, third)
	}
	// Names are escaped, not markup.
	if !strings.Contains(owners[3].text, "<dave>") || strings.Contains(body, "<dave>") {
		t.Errorf("owner name not escaped")
	}
	// Each builder's disputes, by cause, in words; the owners' count,
	// with the causes on hover.
	builders := withClass(els, "builder")
	if len(builders) != 2 {
		t.Fatalf("%d builder rows, want 2", len(builders))
	}
	if d := withClass(els, "disputes"); len(d) != 4+2 ||
		strings.TrimSpace(d[0].text) != "3" || d[0].attrs["title"] != "3 disputes: timestamp ×2, build-path ×1" ||
		strings.TrimSpace(d[1].text) != "0" || d[1].attrs["title"] != "" ||
		strings.TrimSpace(d[4].text) != "3 disputes: timestamp ×2, build-path ×1" || strings.TrimSpace(d[5].text) != "none" {
		var got []string
		for _, n := range d {
			got = append(got, fmt.Sprintf("%q (title %q)", n.text, n.attrs["title"]))
		}
		t.Errorf("disputes cells: %v", got)
	}
	if !strings.Contains(builders[0].text, "timestamp ×2") || strings.Contains(builders[1].text, "timestamp") {
		t.Errorf("builder rows %q, %q: alice-1's causes in its own row only", builders[0].text, builders[1].text)
	}
	set := withClass(els, "set")
	if len(set) != 1 || set[0].attrs["id"] != "set-aaaaaaaaaaaaaaaaaaaaaaaaaa" {
		t.Fatalf("sets %v", set)
	}
	for _, want := range []string{"10 derivations", "quorum 2", "1 disputed", "5 done (2 from the cache)", "2 building", "1 waiting", "1 failed", "1 blocked", "submitted 1m30s ago"} {
		if !strings.Contains(set[0].text, want) {
			t.Errorf("set shows %q, missing %q", set[0].text, want)
		}
	}
	if done := withClass(els, "s-done"); len(done) < 2 || !strings.Contains(done[len(done)-1].attrs["style"], "width: 50.0%") {
		t.Errorf("done segment of the bar: %v", done)
	}
	if withClass(els, "bar")[0].attrs["aria-label"] != "5 of 10 done" {
		t.Errorf("bar label %q", withClass(els, "bar")[0].attrs["aria-label"])
	}
	var scripts, refresh int
	for _, n := range els {
		if n.name == "script" {
			scripts++
		}
		if n.name == "meta" && n.attrs["http-equiv"] == "refresh" {
			refresh++
		}
	}
	if scripts != 0 || refresh != 1 {
		t.Errorf("%d scripts, %d refresh: want none and one", scripts, refresh)
	}

	// One rendering serves visitors for CacheFor.
	get(t, h)
	if n := src.calls.Load(); n != 1 {
		t.Errorf("source read %d times for two visits within CacheFor", n)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/farm", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
}

func TestPageEmptyAndFailing(t *testing.T) {
	code, body := get(t, Handler(&fakeSource{stats: &farm.Stats{Tenant: "t1"}}, Options{}))
	if code != http.StatusOK || !strings.Contains(body, "No builds yet") || !strings.Contains(body, "No build sets in this window") {
		t.Errorf("empty farm: %d\n%s", code, body)
	}
	failing := &fakeSource{err: errors.New("nats: timeout")}
	h := Handler(failing, Options{})
	if code, body := get(t, h); code != http.StatusServiceUnavailable || strings.Contains(body, "nats") {
		t.Errorf("failing source: %d %q", code, body)
	}
	// A failure is not cached: the next visit asks again.
	get(t, h)
	if n := failing.calls.Load(); n != 2 {
		t.Errorf("source asked %d times after a failure, want 2", n)
	}
}

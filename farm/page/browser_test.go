package page

import (
	"context"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/farm"
)

// chromium is Debian's headless browser, or fails the test (never
// skips) saying what to install.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is required for the page's browser test (apt-get install chromium)")
	return ""
}

// TestPageInBrowser loads the page in a real headless browser, without
// JavaScript, and checks the DOM it builds and that it paints.
func TestPageInBrowser(t *testing.T) {
	bin := chromium(t)
	src := &fakeSource{
		stats: &farm.Stats{Tenant: "t1",
			Owners:   []farm.Tally{{Owner: "alice", Builds: 30, CPUSeconds: 7200}, {Owner: "bob", Builds: 12, Failures: 2}},
			Builders: []farm.Tally{{Builder: "alice-1", Owner: "alice", Builds: 30}, {Builder: "bob-1", Owner: "bob", Builds: 12, Failures: 2}}},
		sets: []farm.Summary{{Set: &farm.Set{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaa", Size: 30, Quorum: 2, Created: time.Now().Add(-time.Minute)},
			Counts: map[farm.Status]int{farm.Done: 20, farm.Dispatched: 3, farm.Waiting: 5, farm.Failed: 1, farm.Blocked: 1}, Disputed: 1}},
	}
	srv := httptest.NewServer(Handler(src, Options{}))
	defer srv.Close()
	url := srv.URL + "/farm"
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) []byte {
		t.Helper()
		// Root in a container needs --no-sandbox; a profile of its own
		// keeps runs apart.
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-javascript", "--user-data-dir=" + filepath.Join(dir, "profile")}
		out, err := exec.CommandContext(ctx, bin, append(base, args...)...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}

	dom := string(run("--dump-dom", url))
	els := elements(t, dom)
	if owners := withClass(els, "owner"); len(owners) != 2 || !strings.Contains(owners[0].text, "alice") || len(withClass(els, "gold")) != 1 {
		t.Errorf("leaderboard in the browser's DOM: %d rows\n%s", len(owners), dom)
	}
	if sets := withClass(els, "set"); len(sets) != 1 || !strings.Contains(sets[0].text, "20 done") || !strings.Contains(sets[0].text, "1 disputed") {
		t.Errorf("build sets in the browser's DOM: %v", sets)
	}
	if bars := withClass(els, "s-done"); len(bars) < 2 {
		t.Errorf("no progress bar in the DOM")
	}

	shot := filepath.Join(dir, "farm.png")
	run("--window-size=1280,900", "--screenshot="+shot, url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	// Painted: the page is not one colour.
	b := img.Bounds()
	colours := map[uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[r>>12<<8|g>>12<<4|bl>>12] = true
		}
	}
	if b.Dx() != 1280 || len(colours) < 8 {
		t.Errorf("screenshot %v with %d colours: not the page", b, len(colours))
	}
	if out := os.Getenv("PROVENIX_FARM_SCREENSHOT"); out != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(out, data, 0o644)
	}
}

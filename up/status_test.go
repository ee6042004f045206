package up

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
)

// scrape returns the body of url.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

// TestMetricsAndStatusCountRejection publishes a malformed message on the
// results subject: /metrics counts it as a malformed rejection, /status
// reports it, and the cache's own requests are counted by kind.
func TestMetricsAndStatusCountRejection(t *testing.T) {
	for _, separate := range []bool{false, true} {
		cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}
		if separate {
			cfg.MetricsListen = "127.0.0.1:0"
		}
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Open(ctx); err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		if separate == (s.MetricsURL() == s.CacheURL()+MetricsPath) {
			t.Fatalf("metrics at %s, cache at %s", s.MetricsURL(), s.CacheURL())
		}

		if _, err := s.Conn().JetStream().Publish(ctx, "results."+DefaultTenant+".x86_64-linux", []byte("{not json")); err != nil {
			t.Fatal(err)
		}
		want := `provenix_pusher_rejections_total{reason="` + cachepush.ReasonMalformed + `"} 1`
		var body string
		// One scrape is no snapshot: the registry reads its collectors
		// concurrently, so a scrape during the push may hold the rejection
		// and not yet the receipt counted just before it. Wait for both.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if body = scrape(t, s.MetricsURL()); strings.Contains(body, want) && strings.Contains(body, "provenix_pusher_results_received_total 1") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q in /metrics:\n%s", want, body)
			}
		}
		if !strings.Contains(body, "provenix_pusher_results_received_total 1") {
			t.Errorf("received not counted:\n%s", body)
		}

		// A narinfo miss and a cache-info hit, counted by kind and status.
		for _, p := range []string{"/00000000000000000000000000000000.narinfo", "/nix-cache-info"} {
			resp, err := http.Get(s.CacheURL() + p)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		body = scrape(t, s.MetricsURL())
		for _, w := range []string{
			`provenix_cache_http_requests_total{kind="narinfo",status="404"} 1`,
			`provenix_cache_http_requests_total{kind="other",status="200"} 1`,
			`provenix_pusher_consumer_lag 0`,
		} {
			if !strings.Contains(body, w) {
				t.Errorf("no %q in /metrics:\n%s", w, body)
			}
		}

		var st Status
		if err := json.Unmarshal([]byte(scrape(t, s.StatusURL())), &st); err != nil {
			t.Fatal(err)
		}
		if st.Pusher.Rejections[cachepush.ReasonMalformed] != 1 || st.Pusher.Received != 1 || st.Streams["RESULTS"] != 1 ||
			st.NATSURL != s.NATSURL() || len(st.Errors) != 0 || st.Pusher.LastPublication != nil {
			t.Fatalf("status: %+v", st)
		}
		fetched, err := FetchStatus(ctx, s.Paths())
		if err != nil || fetched.Pusher.Rejections[cachepush.ReasonMalformed] != 1 {
			t.Fatalf("FetchStatus: %+v, %v", fetched, err)
		}
	}
}

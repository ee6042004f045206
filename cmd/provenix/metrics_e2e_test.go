package main

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/up"
)

// metricValue reads the value of an unlabelled sample from /metrics; -1
// when it is absent.
func metricValue(t testing.TB, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// TestEndToEndMetricsStatus builds the sample into the embedded stack and
// sends it a malformed result: /metrics counts the publication and the
// rejection, and 'provenix up --status' reports both.
func TestEndToEndMetricsStatus(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 5*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir})

	pub := buildSample(t, ctx, busybox, "--data-dir", dir)
	waitNarinfo(t, stack.CacheURL(), pub.Outputs[0].Path)
	if _, err := stack.Conn().JetStream().Publish(ctx, "results."+up.DefaultTenant+".x86_64-linux", []byte(`{"version":`)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if metricValue(t, stack.MetricsURL(), `provenix_pusher_rejections_total{reason="malformed"}`) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("malformed result not counted in /metrics")
		}
	}
	if v := metricValue(t, stack.MetricsURL(), "provenix_pusher_results_published_total"); v < 1 {
		t.Fatalf("results_published_total %v", v)
	}
	if v := metricValue(t, stack.MetricsURL(), "provenix_pusher_push_bytes_total"); v <= 0 {
		t.Errorf("push_bytes_total %v", v)
	}
	if v := metricValue(t, stack.MetricsURL(), "provenix_pusher_push_duration_seconds_count"); v < 1 {
		t.Errorf("push_duration_seconds_count %v", v)
	}

	stdout, stderr, code := cli(t, ctx, "up", "--status", "--json", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("up --status --json: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var st up.Status
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("up --status --json: %v\n%s", err, stdout)
	}
	if st.Pusher.Published < 1 || st.Pusher.LastPublication == nil || st.Pusher.Rejections["malformed"] != 1 ||
		st.Streams["RESULTS"] < 2 || st.NATSURL != stack.NATSURL() {
		t.Fatalf("status: %+v", st)
	}
	stdout, stderr, code = cli(t, ctx, "up", "--status", "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, "last publication 2") || !strings.Contains(stdout, "1 malformed") {
		t.Fatalf("up --status: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

// TestQuorumMetrics: two builders agree on a path; /metrics counts the
// pending and the agreed tally and observes one quorum wait.
func TestQuorumMetrics(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 4*time.Minute)
	_, p, bs, stack := quorumStack(t)
	sample := filepath.Join("..", "..", "examples", "hello.nix")
	msg := "--argstr=message=" + uniqueMessage(t)

	a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], sample, "hello", "--arg", "busybox="+busybox, msg)
	path := a.Outputs[0].Path
	waitVotes(t, stack.Conn(), path, 1)
	qbuild(t, ctx, stack.NATSURL(), p, bs[1], sample, "hello", "--arg", "busybox="+busybox, msg)
	waitNarinfo(t, stack.CacheURL(), path)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if metricValue(t, stack.MetricsURL(), "provenix_pusher_results_published_total") >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("publication not counted")
		}
	}
	for name, want := range map[string]float64{
		`provenix_pusher_votes_total{verdict="pending"}`:           1,
		`provenix_pusher_votes_total{verdict="agreed"}`:            1,
		"provenix_pusher_quorum_wait_seconds_count":                1,
		"provenix_pusher_results_received_total":                   2,
		"provenix_pusher_ingest_throughput_bytes_per_second_count": 1,
	} {
		if v := metricValue(t, stack.MetricsURL(), name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
}

package volunteer

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/queue"
)

func TestDisputeLine(t *testing.T) {
	d := dispute{StorePath: "/nix/store/x-p", NARs: map[string][]string{"aaaaaaaaaaaaaaaa": {"me", "x"}, "bbbbbbbbbbbbbbbb": {"y"}},
		Summary: &nardiff.Summary{Files: []string{"/share/stamp"}, Differing: 1, Causes: []nardiff.CauseKind{nardiff.CauseTimestamp}}}
	line, ok := disputeLine(d, "me")
	if !ok || line != "our NAR aaaaaaaaaaaa vs bbbbbbbbbbbb (y): 1 differing: /share/stamp; causes: timestamp" {
		t.Fatalf("line %q %v", line, ok)
	}
	if _, ok := disputeLine(d, "other"); ok {
		t.Error("a dispute without this builder is logged")
	}
}

// TestVolunteerLogsDisputes: a running volunteer logs the disputed events
// of its tenant that name its builder id, with the summary, and no others.
func TestVolunteerLogsDisputes(t *testing.T) {
	conn := startQueue(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	v := &Volunteer{Conn: conn, Builder: &builder.Builder{Tenant: tenant, BuilderID: "vol-1"}, Logger: slogTo(&logs, &mu)}
	stop := v.watchDisputes()
	if stop == nil {
		t.Fatalf("not watching:\n%s", logs.String())
	}
	defer stop()
	ctx := testctx.New(t, 30*time.Second)
	conn.NATS().Flush()
	for _, d := range []dispute{
		{StorePath: "/nix/store/other-p", NARs: map[string][]string{"h1": {"a"}, "h2": {"b"}}},
		{StorePath: "/nix/store/mine-p", NARs: map[string][]string{"h1": {"a"}, "h2": {"vol-1"}},
			Summary: &nardiff.Summary{Files: []string{"/bin/p"}, Differing: 1, Causes: []nardiff.CauseKind{nardiff.CauseBuildPath}}},
	} {
		if err := conn.PublishEvent(ctx, tenant, queue.EventDisputed, d); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		out := logs.String()
		mu.Unlock()
		if strings.Contains(out, "mine-p") {
			if !strings.Contains(out, "causes: build-path") || strings.Contains(out, "other-p") {
				t.Fatalf("log:\n%s", out)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dispute not logged:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nardiff"
)

// TestDiffDisputes (issue 17): derivations made non-reproducible on
// purpose are built by two builders and disputed; `provenix diff` names
// the differing file and the recognised cause of each, `status --diff`
// shows the same, and the disputed event carries the summary.
func TestDiffDisputes(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 6*time.Minute)
	dataDir, p, bs, stack := quorumStack(t)
	disputes := subscribeDisputes(t, stack)
	file := filepath.Join("..", "..", "nardiff", "testdata", "unrepro.nix")
	nats := []string{"--data-dir", dataDir, "--nats-url", stack.NATSURL(), "--nats-token-file", p.NATSToken()}
	summaries := map[string]*nardiff.Summary{}
	for _, c := range []struct {
		attr, file string
		cause      nardiff.CauseKind
	}{
		{"date", "/info", nardiff.CauseTimestamp},
		{"random", "/id", nardiff.CauseRandom},
		{"seed", "/seed", nardiff.CauseRandom},
		{"order", "/listing", nardiff.CauseFileOrder},
		{"buildpath", "/config", nardiff.CauseBuildPath},
		{"gzip", "/page.1.gz", nardiff.CauseTimestamp},
	} {
		a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], file, c.attr, "--arg", "busybox="+busybox)
		b := qbuild(t, ctx, stack.NATSURL(), p, bs[1], file, c.attr, "--arg", "busybox="+busybox)
		path := a.Outputs[0].Path
		if a.Outputs[0].NarSHA256 == b.Outputs[0].NarSHA256 {
			t.Fatalf("%s built the same twice", c.attr)
		}
		waitVotes(t, stack.Conn(), path, 2)

		stdout, stderr, code := cli(t, ctx, append([]string{"diff", "--json"}, append(nats, path)...)...)
		if code != 0 {
			t.Fatalf("diff %s: exit %d\n%s\n%s", c.attr, code, stdout, stderr)
		}
		var pd cachepush.PathDiff
		if err := json.Unmarshal([]byte(stdout), &pd); err != nil || len(pd.Comparisons) != 1 || pd.Comparisons[0].Report == nil {
			t.Fatalf("diff --json %s: %v\n%s", c.attr, err, stdout)
		}
		r := pd.Comparisons[0].Report
		if pd.Verdict != cachepush.VerdictDisputed || r.Differing != 1 || r.Files[0].Path != c.file || len(r.Causes) == 0 || r.Causes[0].Kind != c.cause {
			t.Fatalf("diff %s: verdict %s, report:\n%s", c.attr, pd.Verdict, r.Text())
		}
		stdout, _, code = cli(t, ctx, append([]string{"diff"}, append(nats, path)...)...)
		if code != 0 || !strings.Contains(stdout, c.file+": ") || !strings.Contains(stdout, "cause: "+string(c.cause)) {
			t.Fatalf("diff %s: exit %d\n%s", c.attr, code, stdout)
		}
		if c.attr == "date" {
			stdout, _, code = cli(t, ctx, append([]string{"status", "--diff"}, append(nats, path)...)...)
			if code != 0 || !strings.Contains(stdout, "verdict: disputed") || !strings.Contains(stdout, "cause: timestamp") {
				t.Fatalf("status --diff: exit %d\n%s", code, stdout)
			}
		}
		for summaries[path] == nil {
			select {
			case d := <-disputes:
				summaries[d.StorePath] = d.Summary
				if d.Summary == nil {
					t.Fatalf("disputed event of %s without a summary", d.StorePath)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no disputed event for %s", path)
			}
		}
		if s := summaries[path]; len(s.Files) == 0 || s.Files[0] != c.file || len(s.Causes) == 0 || s.Causes[0] != c.cause {
			t.Errorf("event summary of %s: %+v", c.attr, s)
		}
	}
}

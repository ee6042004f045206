package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/queue"
)

// TestFarmStatsDisputes: 'farm stats' prints each builder's disputes by
// cause, in its table and in --json.
func TestFarmStatsDisputes(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	natsURL, qc := farmNATS(t)
	now := time.Now().UTC()
	rep := &farm.Report{Version: farm.RecordVersion, Set: farm.NewSetID(), Tenant: "default",
		DrvPath: "/nix/store/00000000000000000000000000000000-x.drv", Attempt: 1, Builder: "b1", Owner: "alice", Outcome: farm.Built, Time: now}
	// The claim the report is on: stats count only claimants' reports.
	claim, _ := json.Marshal(farm.Claim{Version: farm.RecordVersion, Attempt: 1, Builder: rep.Builder, Owner: rep.Owner, Delivered: 1, At: now})
	if err := qc.KVPut(ctx, queue.BucketFarm, farm.ClaimKey(rep.Set, rep.DrvPath, rep.Builder), claim); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(rep)
	subj, _ := rep.Subject()
	if _, _, err := qc.PublishFarm(ctx, subj, rep.MsgID(), data); err != nil {
		t.Fatal(err)
	}
	for i, causes := range [][]nardiff.CauseKind{{nardiff.CauseTimestamp}, {nardiff.CauseTimestamp, nardiff.CauseBuildPath}} {
		d := cachepush.Dispute{Time: now, Tenant: rep.Tenant, StorePath: "/nix/store/00000000000000000000000000000000-p" + string(rune('0'+i)),
			NARs: map[string][]string{"aa": {"b1"}, "bb": {"b2"}}, Summary: &nardiff.Summary{Differing: 1, Causes: causes}}
		if err := qc.PublishEvent(ctx, rep.Tenant, queue.EventDisputed, d); err != nil {
			t.Fatal(err)
		}
	}
	conn := []string{"--nats-url", natsURL, "--data-dir", t.TempDir()}
	stdout, stderr, code := cli(t, ctx, append([]string{"farm", "stats", "--tenant", rep.Tenant}, conn...)...)
	if code != 0 || strings.Count(stdout, "2 disputes: timestamp ×2, build-path ×1") != 2 || !strings.Contains(stdout, "disputes\n") {
		t.Errorf("farm stats: exit %d, want alice's and b1's disputes\n%s\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = cli(t, ctx, append([]string{"farm", "stats", "--tenant", rep.Tenant, "--json"}, conn...)...)
	var st farm.Stats
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || len(st.Builders) != 1 ||
		st.Builders[0].Disputes != 2 || st.Builders[0].Causes[nardiff.CauseTimestamp] != 2 || st.Builders[0].Causes[nardiff.CauseBuildPath] != 1 {
		t.Errorf("farm stats --json: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
}

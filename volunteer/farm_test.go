package volunteer

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfarm"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
)

// farmSample: a derivation that builds and one that fails, with the
// sample's busybox builder.
const farmSample = `{ busybox, message }:
let
  bb = builtins.path { name = "busybox"; path = builtins.dirOf busybox; filter = p: t: baseNameOf p == baseNameOf busybox; };
  mk = name: script: derivation { inherit name message; system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}"; args = [ "sh" "-c" script ]; };
in {
  good = mk "farm-good" "echo $message > $out";
  bad = mk "farm-bad" "echo compiling; echo 'error: this is broken' >&2; exit 3";
}
`

// TestFarmFirstBuild: a set submitted from another store (its closure
// staged) is built for the first time by a volunteer through the farm:
// the volunteer imports the .drv, builds it in its own store and
// publishes a signed result; a build that fails comes back with its
// exit code and the end of its log.
func TestFarmFirstBuild(t *testing.T) {
	bb := testnix.Busybox(t)
	conn := startQueue(t)
	ctx := testctx.New(t, 5*time.Minute)
	roots, sub := testfarm.Submit(t, conn, tenant, farmSample, bb, 1, "good", "bad")
	testfarm.StartScheduler(t, conn)

	vb, _ := newBuilder(t, conn, "volunteer-farm")
	v := &Volunteer{Conn: conn, Builder: vb, Systems: []string{"x86_64-linux"}, Once: true}
	if err := v.RunWithFarm(ctx, conn, farm.Machine{System: "x86_64-linux"}, ""); err == nil {
		t.Error("RunWithFarm took Once")
	}
	v.Once = false
	// Rebuild requests and the farm's first builds, with one builder.
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- v.RunWithFarm(wctx, conn, farm.Machine{System: "x86_64-linux"}, "") }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	var good string
	for _, r := range roots {
		if strings.HasSuffix(r, "-farm-good.drv") {
			good = r
		}
	}
	// The good one's result is published by the volunteer, built in its
	// own store; the bad one fails for good (one attempt), with its log.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st, err := farm.GetStatus(ctx, conn, sub.Set.ID)
		if err != nil {
			t.Fatal(err)
		}
		res := testqueue.LastResult(t, conn, tenant, "x86_64-linux", good)
		if st.Counts[farm.Failed] == 1 && res != nil {
			if res.Builder != "volunteer-farm" || len(res.Outputs) != 1 {
				t.Errorf("result %+v", res)
			}
			regs, err := vb.Nix.PathInfos(ctx, res.Outputs[0].Path)
			if err != nil || !regs[0].Ultimate {
				t.Errorf("output not built in the volunteer's store: %+v %v", regs, err)
			}
			for _, d := range st.Derivations {
				if d.Status != farm.Failed {
					continue
				}
				f := d.Failures[0]
				if !strings.HasSuffix(d.DrvPath, "-farm-bad.drv") || f.ExitCode == 0 || !strings.Contains(strings.Join(f.Log, "\n"), "error: this is broken") {
					t.Errorf("failure of %s: %+v", d.DrvPath, f)
				}
				t.Logf("failure reported: exit %d, log %q", f.ExitCode, f.Log)
			}
			// Both builds reported what they cost.
			var stats *farm.Stats
			for range 100 {
				if stats, err = farm.ReadStats(ctx, conn, tenant, time.Now().Add(-time.Hour)); err != nil {
					t.Fatal(err)
				}
				if len(stats.Builders) == 1 && stats.Builders[0].Builds+stats.Builders[0].Failures == 2 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if b := stats.Builders; len(b) != 1 || b[0].Builds != 1 || b[0].Failures != 1 || b[0].CPUSeconds <= 0 || b[0].WallSeconds <= 0 {
				t.Errorf("stats %+v", stats.Builders)
			}
			// The failed build's report carries its CPU time as well.
			failedCPU := -1.0
			if err := conn.ReadFarmReports(ctx, time.Now().Add(-time.Hour), func(subject string, data []byte) error {
				if rep, err := farm.DecodeReport(subject, data); err == nil && rep.Outcome == farm.BuildFailed {
					failedCPU = rep.CPUSeconds
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if failedCPU <= 0 {
				t.Errorf("failed build's CPU seconds: %v", failedCPU)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not done: %s", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFarmStanding: a volunteer the pushers quarantined says so, and why.
func TestFarmStanding(t *testing.T) {
	conn := startQueue(t)
	ctx := testctx.New(t, time.Minute)
	vb, _ := newBuilder(t, conn, "volunteer-s")
	v := &Volunteer{Conn: conn, Builder: vb}
	if q, _, err := v.standing(ctx); err != nil || q {
		t.Errorf("no record: quarantined %v, %v", q, err)
	}
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	rec, _ := json.Marshal(cachepush.Reputation{Builder: "volunteer-s", Agreements: 7, Disagreements: 3,
		Minority: []time.Time{at, at}, Quarantined: true, QuarantinedAt: &at})
	if err := conn.KVPut(ctx, queue.BucketBuilders, queue.BuilderKey("volunteer-s"), rec); err != nil {
		t.Fatal(err)
	}
	q, why, err := v.standing(ctx)
	if err != nil || !q || !strings.Contains(why, "disagreed with others' 3 times (7 agreed), 2 of them recently in the minority") ||
		!strings.Contains(why, "2026-12-01T00:00:00Z") {
		t.Errorf("quarantined: %v %q %v", q, why, err)
	}
}

package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"github.com/nats-io/nats.go/jetstream"
)

func TestFarmNames(t *testing.T) {
	subj, err := FarmBuildSubject("t1", "x86_64-linux", "big-parallel+kvm")
	if err != nil || subj != "farm.build.t1.x86_64-linux.big-parallel+kvm" {
		t.Errorf("FarmBuildSubject: %q, %v", subj, err)
	}
	for _, bad := range [][3]string{{"t.1", "s", "c"}, {"t", "", "c"}, {"t", "s", "a>b"}} {
		if _, err := FarmBuildSubject(bad[0], bad[1], bad[2]); !errors.Is(err, ErrInvalidName) {
			t.Errorf("FarmBuildSubject(%q): %v", bad, err)
		}
	}
	a, b := FarmConsumer("farm.build.t1.x86_64-linux.none"), FarmConsumer("farm.build.t1.x86_64-linux.kvm")
	if a == b || !strings.HasPrefix(a, FarmConsumerPrefix) || strings.ContainsAny(a, ".*> ") {
		t.Errorf("FarmConsumer names %q, %q", a, b)
	}
	if long := FarmConsumer("farm.build." + strings.Repeat("x", 500)); len(long) > 255 {
		t.Errorf("FarmConsumer of a long subject: %d bytes", len(long))
	}
}

func TestFarmStreams(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, time.Minute)
	// A bucket as EnsureFarm made it before it denied rollups.
	if err := c.ensureBucket(ctx, jetstream.KeyValueConfig{Bucket: BucketFarm, History: 1, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureFarm(ctx, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureFarm(ctx, StreamOptions{}); err != nil {
		t.Fatalf("EnsureFarm again: %v", err)
	}
	// Other options after the rollups are denied: an update of the
	// stream, which nats.go's bucket update would refuse.
	if err := c.EnsureFarm(ctx, StreamOptions{MaxAge: 2 * DefaultMaxAge}); err != nil {
		t.Fatalf("EnsureFarm with another MaxAge: %v", err)
	}
	if s, err := c.js.Stream(ctx, kvStreamPrefix+BucketFarm); err != nil {
		t.Fatal(err)
	} else if cfg := s.CachedInfo().Config; !cfg.DenyPurge || cfg.AllowRollup || cfg.MaxAge != 8*DefaultMaxAge {
		t.Errorf("farm bucket: deny_purge %v, allow_rollup_hdrs %v, max_age %v", cfg.DenyPurge, cfg.AllowRollup, cfg.MaxAge)
	}
	h := func(context.Context, *Delivery) error { return nil }
	if _, err := c.ConsumeFarm(ctx, ConsumerOptions{FilterSubject: "results.t1.x"}, h); !errors.Is(err, ErrInvalidName) {
		t.Errorf("ConsumeFarm of a results subject: %v", err)
	}
	if _, err := c.ConsumeFarm(ctx, ConsumerOptions{FilterSubject: FarmReportFilter, Group: "g"}, h); err == nil {
		t.Error("ConsumeFarm took a group")
	}
	if _, _, err := c.PublishFarm(ctx, "events.t1.x", "id", nil); !errors.Is(err, ErrInvalidName) {
		t.Errorf("PublishFarm outside farm.: %v", err)
	}

	// Requests and reports go to their streams, once per message id.
	subj, _ := FarmBuildSubject("t1", "x86_64-linux", "none")
	for range 2 {
		if _, _, err := c.PublishFarm(ctx, subj, "req-1", []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	rsubj, err := FarmReportSubject("t1", "b1")
	if err != nil || rsubj != "farm.report.t1."+StagingScope("b1") {
		t.Fatalf("FarmReportSubject: %q, %v", rsubj, err)
	}
	if _, err := FarmReportSubject("t1", ""); !errors.Is(err, ErrInvalidName) {
		t.Errorf("FarmReportSubject without builder: %v", err)
	}
	before := time.Now()
	for i := range 3 {
		if _, _, err := c.PublishFarm(ctx, rsubj, fmt.Sprintf("rep-%d", i), fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	for stream, want := range map[string]uint64{StreamFarm: 1, StreamFarmReports: 3} {
		s, err := c.JetStream().Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().State.Msgs; got != want {
			t.Errorf("%s holds %d messages, want %d", stream, got, want)
		}
	}

	// ReadFarmReports reads a window, oldest first, and stops at the end.
	var got []string
	if err := c.ReadFarmReports(ctx, before.Add(-time.Second), func(s string, data []byte) error {
		got = append(got, s+" "+string(data))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`%[1]s {"n":0},%[1]s {"n":1},%[1]s {"n":2}`, rsubj); strings.Join(got, ",") != want {
		t.Errorf("read %v", got)
	}
	got = nil
	if err := c.ReadFarmReports(ctx, time.Now().Add(time.Minute), func(s string, _ []byte) error { got = append(got, s); return nil }); err != nil || len(got) != 0 {
		t.Errorf("a window after the last report: %v, %v", got, err)
	}
}

package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/queue/server"
)

func TestEnsureStreamsIdempotent(t *testing.T) {
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	tests := []struct {
		name       string
		opts       StreamOptions
		wantMaxAge time.Duration
		wantDup    time.Duration
	}{
		{"create", StreamOptions{}, DefaultMaxAge, resultsDuplicates},
		{"again", StreamOptions{}, DefaultMaxAge, resultsDuplicates},
		{"update max age", StreamOptions{MaxAge: time.Hour}, time.Hour, resultsDuplicates},
		{"max age below duplicate window", StreamOptions{MaxAge: time.Minute}, time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.EnsureStreams(testctx.New(t, 30*time.Second), tt.opts); err != nil {
				t.Fatal(err)
			}
			st, err := c.js.Stream(testctx.New(t, 30*time.Second), StreamResults)
			if err != nil {
				t.Fatal(err)
			}
			cfg := st.CachedInfo().Config
			if cfg.MaxAge != tt.wantMaxAge || cfg.Duplicates != tt.wantDup || cfg.Retention != jetstream.LimitsPolicy ||
				cfg.Storage != jetstream.FileStorage || cfg.MaxMsgSize != MaxResultSize+resultHeaderAllowance ||
				cfg.Discard != jetstream.DiscardOld {
				t.Errorf("RESULTS config: %+v", cfg)
			}
			ev, err := c.js.Stream(testctx.New(t, 30*time.Second), StreamEvents)
			if err != nil {
				t.Fatal(err)
			}
			if got := ev.CachedInfo().Config.MaxAge; got != tt.wantMaxAge {
				t.Errorf("EVENTS MaxAge = %s", got)
			}
			obs, err := c.js.ObjectStore(testctx.New(t, 30*time.Second), BucketStaging)
			if err != nil {
				t.Fatal(err)
			}
			status, err := obs.Status(testctx.New(t, 30*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if status.TTL() != tt.wantMaxAge || status.Storage() != jetstream.FileStorage {
				t.Errorf("staging: ttl %s storage %v", status.TTL(), status.Storage())
			}
		})
	}
}

func TestEnsureStreamsOptions(t *testing.T) {
	tests := []struct {
		name string
		opts StreamOptions
	}{
		{"negative max age", StreamOptions{MaxAge: -time.Second}},
		{"negative replicas", StreamOptions{Replicas: -1}},
		{"too many replicas", StreamOptions{Replicas: 7}},
	}
	c := &Conn{} // never reaches the server
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.EnsureStreams(context.Background(), tt.opts); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestEnsureStreamsReplicasUnavailable(t *testing.T) {
	// A single server cannot hold 3 replicas: the error must surface.
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{Replicas: 3}); err == nil {
		t.Fatal("3 replicas on one server accepted")
	}
}

func TestCheckStreamConfig(t *testing.T) {
	want := resultsConfig(StreamOptions{MaxAge: DefaultMaxAge, Replicas: 1})
	tests := []struct {
		name   string
		mutate func(*jetstream.StreamConfig)
		ok     bool
	}{
		{"same", func(*jetstream.StreamConfig) {}, true},
		{"server adds defaults", func(c *jetstream.StreamConfig) { c.MaxMsgs = -1; c.MaxBytes = -1 }, true},
		{"duplicates dropped", func(c *jetstream.StreamConfig) { c.Duplicates = 0 }, false},
		{"max msg size dropped", func(c *jetstream.StreamConfig) { c.MaxMsgSize = -1 }, false},
		{"max age dropped", func(c *jetstream.StreamConfig) { c.MaxAge = 0 }, false},
		{"subjects differ", func(c *jetstream.StreamConfig) { c.Subjects = []string{"other.>"} }, false},
		{"retention differs", func(c *jetstream.StreamConfig) { c.Retention = jetstream.WorkQueuePolicy }, false},
		{"rollup dropped", func(c *jetstream.StreamConfig) { c.AllowRollup = false }, true}, // not wanted for RESULTS
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := want
			got.Subjects = append([]string(nil), want.Subjects...)
			tt.mutate(&got)
			err := checkStreamConfig(want, got)
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrConfigDropped) {
				t.Errorf("err = %v, want ErrConfigDropped", err)
			}
		})
	}
	stagingWant := jetstream.StreamConfig{AllowRollup: true}
	if err := checkStreamConfig(stagingWant, jetstream.StreamConfig{}); !errors.Is(err, ErrConfigDropped) {
		t.Errorf("dropped AllowRollup not detected: %v", err)
	}
}

// TestClusterSettling: what a cluster refuses while it settles (no peers
// yet; a create racing an election's "stream not found") is waited for by
// EnsureStreams; other refusals are not.
func TestClusterSettling(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement"}, true},
		{fmt.Errorf("queue: ensure stream RESULTS: %w", &jetstream.APIError{Code: 400, ErrorCode: 10005}), true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10065, Description: "subjects overlap with an existing stream"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use"}, false},
		{errors.New("no suitable peers for placement"), false},
	} {
		if got := clusterSettling(tc.err); got != tc.want {
			t.Errorf("clusterSettling(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestEnsureStreamsWritesOnlyChanges: EnsureStreams on streams and buckets
// that already are as wanted sends no create or update (a write through
// the cluster's meta leader, which an election leaves unanswered); a
// changed setting is still written.
func TestEnsureStreamsWritesOnlyChanges(t *testing.T) {
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	// A channel, not a callback: the client's reader puts each message
	// in it before it reads Flush's answer, so count sees every write
	// made before it (a callback may still be running then).
	msgs := make(chan *nats.Msg, 1024)
	for _, subj := range []string{"$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>"} {
		sub, err := c.NATS().ChanSubscribe(subj, msgs)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	count := func() []string {
		c.NATS().Flush()
		var w []string
		for {
			select {
			case m := <-msgs:
				w = append(w, m.Subject)
			default:
				return w
			}
		}
	}
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if w := count(); len(w) < 6 {
		t.Fatalf("first EnsureStreams wrote %v, want the 3 streams, staging and 2 KV buckets", w)
	}
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if w := count(); len(w) != 0 {
		t.Fatalf("EnsureStreams on unchanged streams wrote %v", w)
	}
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if w := count(); len(w) < 5 {
		t.Fatalf("a new MaxAge was written to %v only", w)
	}
}

// TestStagingRefusesRollups: the staging stream refuses rollups, so no
// message, whoever may publish it, purges what others staged with a
// "Nats-Rollup: all" header. A bucket made before (nats.go's Object Store
// allows rollups) is changed by EnsureStreams, keeps its content, and
// takes later changes of its options. Until then builders stage with a
// rollup (layoutRollup, which older pushers read); one whose connection
// still has the stream as it was goes on as a commit when refused.
func TestStagingRefusesRollups(t *testing.T) {
	srv, c := setup(t)
	ctx := testctx.New(t, time.Minute)
	if err := c.js.DeleteStream(ctx, stagingStream); err != nil {
		t.Fatal(err)
	}
	c.stagingObs, c.stagingStream = nil, nil
	if _, err := c.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: BucketStaging, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	staged := map[string][]byte{}
	stage := func(name string, wantUpload bool) {
		t.Helper()
		data := randomBytes(uint64(len(staged)+30), 2*stageChunkSize+3)
		key := ScopedKey("closure/"+name, "builder")
		if _, err := c.Stage(ctx, key, bytes.NewReader(data)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		staged[key] = data
		last, err := c.stagingStream.GetLastMsgForSubject(ctx, stagingChunksPrefix+scopedChunkID(key, StagingScope("builder")))
		if err != nil {
			t.Fatal(err)
		}
		if got := last.Header.Get(uploadHeader) != ""; got != wantUpload {
			t.Errorf("%s: staged as a commit %v, want %v", name, got, wantUpload)
		}
	}
	stage("before", false)
	other := connect(t, srv.ClientURL())
	if err := other.EnsureStreams(ctx, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	stage("refused", true)
	stage("after", true)
	for _, o := range []StreamOptions{{}, {MaxAge: 2 * DefaultMaxAge}} {
		if err := c.EnsureStreams(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for key, data := range staged {
		if got, _ := readStaged(t, other, key); !bytes.Equal(got, data) {
			t.Errorf("%s: read back is not what was staged", key)
		}
	}
	s, err := c.js.Stream(ctx, stagingStream)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.CachedInfo().Config; cfg.AllowRollup || cfg.MaxAge != 2*DefaultMaxAge {
		t.Errorf("staging: allow_rollup_hdrs %v, max_age %v", cfg.AllowRollup, cfg.MaxAge)
	}
	for _, subj := range []string{stagingChunksPrefix + StagingScope("builder") + ".wipe", metaSubject("closure/wipe")} {
		m := nats.NewMsg(subj)
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupAll)
		if _, err := c.js.PublishMsg(ctx, m); err == nil || !strings.Contains(err.Error(), "rollup") {
			t.Errorf("Nats-Rollup: all on %s: %v, want the rollup refused", subj, err)
		}
	}
	for key, data := range staged {
		if got, _ := readStaged(t, c, key); !bytes.Equal(got, data) {
			t.Errorf("%s: gone after the rollups", key)
		}
	}
}

// TestHardenedFromCreation: the staging stream and the farm's bucket are
// created without rollups (and the farm's without purges), not created
// as nats.go makes them and updated after: a user that may create them
// but not update them ensures them on a fresh server (Debian's 2.9), and
// a second EnsureStreams and EnsureFarm have nothing to change.
// Created and then updated, a crash in between left rollups allowed.
func TestHardenedFromCreation(t *testing.T) {
	conf := `authorization: {users: [{user: u, password: p, permissions: {publish: {allow: ">", deny: ["$JS.API.STREAM.UPDATE.` +
		stagingStream + `", "$JS.API.STREAM.UPDATE.` + kvStreamPrefix + BucketFarm + `"]}}}]}`
	srv := testnats.Start(t, t.TempDir(), conf, false)
	for _, o := range []StreamOptions{{}, {MaxAge: time.Minute}} {
		ctx := testctx.New(t, time.Minute)
		c := connect(t, testnats.WithUser(srv.URL, "u", "p"))
		for _, again := range []bool{false, true} {
			if err := c.EnsureStreams(ctx, o); err != nil {
				t.Fatalf("EnsureStreams %+v (again %v): %v", o, again, err)
			}
			if err := c.EnsureFarm(ctx, o); err != nil {
				t.Fatalf("EnsureFarm %+v (again %v): %v", o, again, err)
			}
		}
		for _, name := range []string{stagingStream, kvStreamPrefix + BucketFarm} {
			s, err := c.js.Stream(ctx, name)
			if err != nil {
				t.Fatalf("%s, options %+v: %v", name, o, err)
			}
			cfg := s.CachedInfo().Config
			if cfg.AllowRollup || !cfg.AllowDirect || name != stagingStream && !cfg.DenyPurge {
				t.Errorf("%s: allow_rollup_hdrs %v, allow_direct %v, deny_purge %v", name, cfg.AllowRollup, cfg.AllowDirect, cfg.DenyPurge)
			}
			if err := c.js.DeleteStream(ctx, name); err != nil { // fresh again for the next options
				t.Fatal(err)
			}
		}
	}
}

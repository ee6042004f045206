package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue/server"
)

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

func objectDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
}

func narKey(b []byte) string {
	sum := sha256.Sum256(b)
	return StagingKey(hex.EncodeToString(sum[:]))
}

// stagingState is the staging stream's message and byte counts: equal
// before and after a failed Stage means no chunk was left behind.
func stagingState(t testing.TB, c *Conn) (msgs, bytes uint64) {
	t.Helper()
	st, err := c.js.Stream(testctx.New(t, 30*time.Second), stagingStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testctx.New(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs, info.State.Bytes
}

func readStaged(t testing.TB, c *Conn, key string) ([]byte, StagedInfo) {
	t.Helper()
	rc, info, err := c.OpenStaged(testctx.New(t, 30*time.Second), key)
	if err != nil {
		t.Fatalf("OpenStaged: %v", err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read staged: %v", err)
	}
	return got, info
}

func TestStageRoundTrip(t *testing.T) {
	_, c := setup(t)
	tests := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"one chunk exactly", stageChunkSize},
		{"one chunk and a byte", stageChunkSize + 1},
		{"more than the window", stageWindow*stageChunkSize + 12345},
		{"20 MiB", 20 << 20},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomBytes(uint64(i), tt.size)
			key := narKey(data)
			// iotest-like small reads: Stage must still send whole chunks.
			staged, err := c.Stage(testctx.New(t, 30*time.Second), key, &smallReader{r: bytes.NewReader(data), max: 1000})
			if err != nil {
				t.Fatalf("Stage: %v", err)
			}
			want := StagedInfo{Key: key, Size: uint64(tt.size), Digest: objectDigest(data)}
			if staged != want {
				t.Errorf("Stage = %+v, want %+v", staged, want)
			}
			got, info := readStaged(t, c, key)
			if info != want {
				t.Errorf("OpenStaged info = %+v, want %+v", info, want)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, differ from the %d staged", len(got), len(data))
			}
			if objectDigest(got) != info.Digest {
				t.Error("digest of the content read differs from the stored digest")
			}
			// nats.go's own reader agrees on the layout.
			obs, err := c.js.ObjectStore(testctx.New(t, 30*time.Second), BucketStaging)
			if err != nil {
				t.Fatal(err)
			}
			oi, err := obs.GetInfo(testctx.New(t, 30*time.Second), key)
			if err != nil {
				t.Fatal(err)
			}
			if wantChunks := uint32((tt.size + stageChunkSize - 1) / stageChunkSize); oi.Chunks != wantChunks {
				t.Errorf("%d chunks, want %d (whole chunks)", oi.Chunks, wantChunks)
			}
		})
	}
}

type smallReader struct {
	r   io.Reader
	max int
}

func (s *smallReader) Read(p []byte) (int, error) {
	if len(p) > s.max {
		p = p[:s.max]
	}
	return s.r.Read(p)
}

// failReader fails the test if it is read: Stage must not read a reader
// whose content is already staged.
type failReader struct{ t *testing.T }

func (f failReader) Read([]byte) (int, error) {
	f.t.Error("reader read although the content was staged already")
	return 0, io.EOF
}

func TestStageReuseAndReplace(t *testing.T) {
	_, c := setup(t)
	data := randomBytes(1, 3<<20)
	key := narKey(data)
	first, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	msgs, size := stagingState(t, c)

	// Same content-addressed key, content already there: not read again,
	// and nothing written but a fresh meta (staging GC goes by its time).
	again, err := c.Stage(testctx.New(t, 30*time.Second), key, failReader{t})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || again.Digest != first.Digest || again.Size != first.Size {
		t.Errorf("second Stage = %+v, want reuse of %+v", again, first)
	}
	if m, b := stagingState(t, c); m != msgs+1 || b > size+1024 {
		t.Errorf("reuse wrote: %d msgs %d bytes, was %d %d; want one meta more", m, b, msgs, size)
	}

	// Content-addressed, but the chunks are gone: uploaded again.
	oi, err := c.stagingObs.GetInfo(testctx.New(t, 30*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.stagingStream.Purge(testctx.New(t, 30*time.Second), jetstream.WithPurgeSubject(stagingChunksPrefix+oi.NUID)); err != nil {
		t.Fatal(err)
	}
	if s, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data)); err != nil || s.Reused {
		t.Fatalf("Stage over lost chunks: %+v, %v; want a new upload", s, err)
	}
	if got, _ := readStaged(t, c, key); !bytes.Equal(got, data) {
		t.Fatal("content after re-upload differs")
	}

	// A content-addressed key holding other content than it names (a
	// broken or hostile upload): replaced, not reused.
	other := randomBytes(2, 1<<20)
	right := randomBytes(3, 1<<20)
	key2 := narKey(right)
	if _, err := c.Stage(testctx.New(t, 30*time.Second), key2, bytes.NewReader(other)); err != nil {
		t.Fatal(err)
	}
	s, err := c.Stage(testctx.New(t, 30*time.Second), key2, bytes.NewReader(right))
	if err != nil {
		t.Fatal(err)
	}
	if s.Reused {
		t.Error("wrong content under a content-addressed key reused")
	}
	if got, _ := readStaged(t, c, key2); !bytes.Equal(got, right) {
		t.Fatal("content not replaced")
	}
	// Plain keys are always replaced, and the old chunks go.
	for i, content := range [][]byte{data, other, data[:1000]} {
		s, err := c.Stage(testctx.New(t, 30*time.Second), "plain/key", bytes.NewReader(content))
		if err != nil {
			t.Fatal(err)
		}
		if s.Reused {
			t.Errorf("round %d: plain key reused", i)
		}
		if got, _ := readStaged(t, c, "plain/key"); !bytes.Equal(got, content) {
			t.Fatalf("round %d: wrong content", i)
		}
	}
	// Left: key (24 chunks, 3 metas: upload, reuse, upload), key2 (8
	// chunks, 2 metas) and plain/key (1 chunk, 3 metas): replaced chunks
	// were purged; the older metas stay until they expire or staging GC
	// trims them (the stream refuses rollups).
	if m, _ := stagingState(t, c); m != 24+3+8+2+1+3 {
		t.Errorf("%d messages left in the bucket, want 41", m)
	}
}

func TestStageMissingAndDelete(t *testing.T) {
	_, c := setup(t)
	if _, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), "nar/absent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenStaged absent: %v, want ErrNotFound", err)
	}
	if err := c.DeleteStaged(testctx.New(t, 30*time.Second), "nar/absent"); err != nil {
		t.Fatalf("DeleteStaged absent: %v", err)
	}
	data := randomBytes(3, 500_000)
	if _, err := c.Stage(testctx.New(t, 30*time.Second), "k", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := c.DeleteStaged(testctx.New(t, 30*time.Second), "k"); err != nil {
			t.Fatalf("DeleteStaged %d: %v", i, err)
		}
	}
	if _, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenStaged deleted: %v, want ErrNotFound", err)
	}
	if m, _ := stagingState(t, c); m != 0 {
		t.Errorf("%d messages left, want none", m)
	}
	// A deleted object can be staged again.
	if _, err := c.Stage(testctx.New(t, 30*time.Second), "k", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if got, _ := readStaged(t, c, "k"); !bytes.Equal(got, data) {
		t.Fatal("restaged content differs")
	}
}

func TestStageWithoutBucket(t *testing.T) {
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	if _, err := c.Stage(testctx.New(t, 30*time.Second), "k", strings.NewReader("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stage without bucket: %v, want ErrNotFound", err)
	}
}

func TestStagingInvalidKey(t *testing.T) {
	_, c := setup(t)
	for i, key := range []string{"", "with space", "tab\t", "nl\n", "ünï", "a*b", "q?", strings.Repeat("k", maxKeyLen+1)} {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if _, err := c.Stage(testctx.New(t, 30*time.Second), key, failReader{t}); !errors.Is(err, ErrInvalidName) {
				t.Errorf("Stage: %v", err)
			}
			if _, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), key); !errors.Is(err, ErrInvalidName) {
				t.Errorf("OpenStaged: %v", err)
			}
			if err := c.DeleteStaged(testctx.New(t, 30*time.Second), key); !errors.Is(err, ErrInvalidName) {
				t.Errorf("DeleteStaged: %v", err)
			}
		})
	}
	for _, key := range []string{"nar/00ff", "a-b_c.d/e+f=g:h@i", StagingKey(strings.Repeat("ab", 32))} {
		if err := validKey(key); err != nil {
			t.Errorf("validKey(%q): %v", key, err)
		}
	}
}

// hookReader serves r and calls hook once after at bytes; hook's error, if
// any, is returned from then on.
type hookReader struct {
	r    io.Reader
	n    int
	at   int
	hook func() error
	err  error
}

func (h *hookReader) Read(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	n, err := h.r.Read(p)
	h.n += n
	if h.n >= h.at && h.hook != nil {
		h.err = h.hook()
		h.hook = nil
	}
	return n, err
}

// slowReader sleeps before each read.
type slowReader struct {
	r io.Reader
	d time.Duration
}

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.d)
	return s.r.Read(p)
}

// TestStageFailureLeavesNoChunks: an upload that fails midway, for
// whatever reason, leaves the bucket as it was. (nats.go's Put does not:
// cancelled, it leaves its chunks behind.)
func TestStageFailureLeavesNoChunks(t *testing.T) {
	_, c := setup(t)
	if _, err := c.Stage(testctx.New(t, 30*time.Second), "existing", bytes.NewReader(randomBytes(9, 1<<20))); err != nil {
		t.Fatal(err)
	}
	errDisk := errors.New("disk on fire")
	big := func() io.Reader { return io.LimitReader(rand.NewChaCha8([32]byte{7}), 256<<20) }
	tests := []struct {
		name    string
		run     func(key string) error
		wantErr error
	}{
		{"cancelled after 5 MiB", func(key string) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := c.Stage(ctx, key, &hookReader{r: big(), at: 5 << 20, hook: func() error { cancel(); return nil }})
			return err
		}, context.Canceled},
		{"cancelled while reading", func(key string) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// The reader blocks like a pipe from a stalled producer until
			// ctx ends, then fails.
			r := &hookReader{r: big(), at: 3 << 20, hook: func() error {
				go func() { time.Sleep(50 * time.Millisecond); cancel() }()
				<-ctx.Done()
				return ctx.Err()
			}}
			_, err := c.Stage(ctx, key, r)
			return err
		}, context.Canceled},
		{"reader fails after 3 MiB", func(key string) error {
			_, err := c.Stage(testctx.New(t, 30*time.Second), key, &hookReader{r: big(), at: 3 << 20, hook: func() error { return errDisk }})
			return err
		}, errDisk},
		{"deadline", func(key string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := c.Stage(ctx, key, slowReader{r: big(), d: 2 * time.Millisecond})
			return err
		}, context.DeadlineExceeded},
		{"replacing an existing object", func(string) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := c.Stage(ctx, "existing", &hookReader{r: big(), at: 2 << 20, hook: func() error { cancel(); return nil }})
			return err
		}, context.Canceled},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs, size := stagingState(t, c)
			key := fmt.Sprintf("failed/%d", i)
			err := tt.run(key)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Stage: %v, want %v", err, tt.wantErr)
			}
			if m, b := stagingState(t, c); m != msgs || b != size {
				t.Errorf("bucket has %d msgs / %d bytes, had %d / %d: chunks left behind", m, b, msgs, size)
			}
			if _, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), key); !errors.Is(err, ErrNotFound) {
				t.Errorf("OpenStaged of the failed key: %v, want ErrNotFound", err)
			}
		})
	}
	// The object a failed replacement targeted is intact.
	if got, _ := readStaged(t, c, "existing"); !bytes.Equal(got, randomBytes(9, 1<<20)) {
		t.Error("existing object damaged by a failed replacement")
	}
}

// TestOpenStagedCorrupt: content that does not match its digest, or
// missing chunks, is reported as ErrCorrupt, never as a clean io.EOF.
// A one-chunk object is read whole at open (see readSmallObject), so its
// corruption shows there.
func TestOpenStagedCorrupt(t *testing.T) {
	_, c := setup(t)
	for _, size := range []int{2 << 20, 1000} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) { testOpenStagedCorrupt(t, c, size) })
	}
}

func testOpenStagedCorrupt(t *testing.T, c *Conn, size int) {
	data := randomBytes(4, size)
	tests := []struct {
		name   string
		tamper func(t *testing.T, info *jetstream.ObjectInfo)
		atOpen bool
	}{
		{"digest claims other content", func(t *testing.T, info *jetstream.ObjectInfo) {
			info.Digest = objectDigest([]byte("something else"))
			publishMeta(t, c, info)
		}, false},
		{"chunks missing", func(t *testing.T, info *jetstream.ObjectInfo) {
			st, err := c.js.Stream(testctx.New(t, 30*time.Second), stagingStream)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Purge(testctx.New(t, 30*time.Second), jetstream.WithPurgeSubject(stagingChunksPrefix+info.NUID)); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("corrupt/%d/%d", size, i)
			if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			obs, err := c.js.ObjectStore(testctx.New(t, 30*time.Second), BucketStaging)
			if err != nil {
				t.Fatal(err)
			}
			info, err := obs.GetInfo(testctx.New(t, 30*time.Second), key)
			if err != nil {
				t.Fatal(err)
			}
			tt.tamper(t, info)
			rc, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), key)
			if tt.atOpen || size <= stageChunkSize {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("OpenStaged: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if _, err := io.ReadAll(rc); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("read: %v, want ErrCorrupt", err)
			}
		})
	}
}

func publishMeta(t *testing.T, c *Conn, info *jetstream.ObjectInfo) {
	t.Helper()
	data, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(metaSubject(info.Name))
	m.Data = data
	if _, err := c.js.PublishMsg(testctx.New(t, 30*time.Second), m); err != nil {
		t.Fatal(err)
	}
}

func TestOpenStagedCancel(t *testing.T) {
	_, c := setup(t)
	data := randomBytes(5, 4<<20)
	if _, err := c.Stage(testctx.New(t, 30*time.Second), "k", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err := c.OpenStaged(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); err == nil {
		t.Fatal("read to the end after cancel")
	}
}

func TestContentMatchesKey(t *testing.T) {
	data := []byte("nar")
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	tests := []struct {
		key, digest string
		want        bool
	}{
		{StagingKey(h), objectDigest(data), true},
		{StagingKey(h), objectDigest([]byte("other")), false},
		{"other/" + h, objectDigest(data), false},
		{StagingKey(h[:10]), objectDigest(data), false},
		{StagingKey(strings.Repeat("zz", 32)), objectDigest(data), false},
		{StagingKey(h), "garbage", false},
	}
	for _, tt := range tests {
		if got := contentMatchesKey(tt.key, tt.digest); got != tt.want {
			t.Errorf("contentMatchesKey(%q, %q) = %v", tt.key, tt.digest, got)
		}
	}
}

// BenchmarkStage stages 64 MiB per iteration from a generator (no 64 MiB
// buffer on the client side). B/op includes the in-process server's
// allocations.
func BenchmarkStage(b *testing.B) {
	_, c := setup(b)
	const size = 64 << 20
	b.SetBytes(size)
	b.ReportAllocs()
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		key := fmt.Sprintf("bench/%d", i)
		if _, err := c.Stage(ctx, key, io.LimitReader(rand.NewChaCha8([32]byte{byte(i)}), size)); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.DeleteStaged(ctx, key); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// TestStageMemoryBounded: staging an object several times larger than
// the allowed growth must not grow the heap with it. The heap measured
// includes the in-process server; the bound is generous for that.
func TestStageMemoryBounded(t *testing.T) {
	_, c := setup(t)
	const size, bound = 256 << 20, 128 << 20
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	info, err := c.Stage(testctx.New(t, 30*time.Second), "big", io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	close(done)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != size {
		t.Fatalf("staged %d bytes", info.Size)
	}
	growth := int64(peak.Load()) - int64(base)
	t.Logf("peak heap growth staging %d MiB: %d MiB", size>>20, growth>>20)
	if growth > bound {
		t.Errorf("heap grew by %d MiB staging %d MiB: memory grows with the object", growth>>20, size>>20)
	}
}

// TestStageOneChunkSubscribesNothing: staging an object of one chunk
// (most NARs and closures) publishes it through the connection's request
// inbox; only one of several chunks makes the async publisher, whose
// wildcard ack inbox the server adds and removes by scanning its subject
// cache. Both are read back whole.
func TestStageOneChunkSubscribesNothing(t *testing.T) {
	s, c := setup(t)
	inserts := func() uint64 {
		t.Helper()
		sz, err := s.NATS().Subsz(nil)
		if err != nil {
			t.Fatal(err)
		}
		return sz.NumInserts
	}
	for i, tt := range []struct {
		size          int
		scoped        bool
		subscriptions bool
	}{
		{1000, false, false},
		{1000, true, false},
		{stageChunkSize, true, false},
		{0, true, false},
		{stageChunkSize + 1, false, true},
		{3 * stageChunkSize, true, true},
	} {
		data := randomBytes(uint64(i)+40, tt.size)
		key := fmt.Sprintf("closure/one-chunk-%d", i)
		if tt.scoped {
			key = ScopedKey(key, "builder")
		}
		before := inserts()
		if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if got := inserts() - before; (got > 0) != tt.subscriptions {
			t.Errorf("staging %d bytes (scoped %v) made %d subscriptions", tt.size, tt.scoped, got)
		}
		if got, info := readStaged(t, c, key); !bytes.Equal(got, data) || info.Size != uint64(tt.size) {
			t.Errorf("read back %d bytes (size %d) of %d staged", len(got), info.Size, tt.size)
		}
	}
}

// TestStageReuseOnlyFresh: staged content is reused only while it has
// half the stream's MaxAge left to live, counted from its chunks (each
// reuse writes a fresh meta, which must not make them younger). Older
// content handed out again could expire before a pusher reads it, and the
// result naming it would be rejected for a missing NAR, against an honest
// builder.
func TestStageReuseOnlyFresh(t *testing.T) {
	const maxAge = 6 * time.Second
	c := connect(t, startServer(t, server.Config{}).ClientURL())
	if err := c.EnsureStreams(context.Background(), StreamOptions{MaxAge: maxAge}); err != nil {
		t.Fatal(err)
	}
	data := []byte("a NAR staged again and again")
	for _, key := range []string{narKey(data), ScopedKey(narKey(data), "builder")} {
		t.Run(key, func(t *testing.T) {
			t.Parallel()
			ctx := testctx.New(t, time.Minute)
			stage := func() bool {
				t.Helper()
				info, err := c.Stage(ctx, key, bytes.NewReader(data))
				if err != nil {
					t.Fatal(err)
				}
				return info.Reused
			}
			start := time.Now()
			if stage() {
				t.Fatal("first upload reused")
			}
			if !stage() {
				t.Fatal("fresh content not reused")
			}
			time.Sleep(time.Until(start.Add(maxAge / 4)))
			if !stage() {
				t.Fatal("content at a quarter of its MaxAge not reused")
			}
			time.Sleep(time.Until(start.Add(maxAge/2 + 500*time.Millisecond)))
			if stage() {
				t.Error("content past half its MaxAge reused")
			}
			// Past the first upload's MaxAge, the content staged last is
			// there.
			time.Sleep(time.Until(start.Add(maxAge + 1500*time.Millisecond)))
			rc, _, err := c.OpenStaged(ctx, key)
			if err != nil {
				t.Fatalf("after the first upload expired: %v", err)
			}
			rc.Close()
		})
	}
}

// TestStageReuseNeedsItsMeta: reuse writes its fresh meta only while the
// meta it read before checking the content is the last. Staging GC
// removes the meta first: content whose meta went meanwhile is uploaded
// again, never handed out while its chunks may be going too.
func TestStageReuseNeedsItsMeta(t *testing.T) {
	onBothServers(t, testReuseNeedsItsMeta)
}

func testReuseNeedsItsMeta(t *testing.T, c *Conn) {
	ctx := testctx.New(t, 30*time.Second)
	_, stream, err := c.staging(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a NAR whose meta staging GC took")
	for _, key := range []string{narKey(data), ScopedKey(narKey(data), "builder")} {
		t.Run(key, func(t *testing.T) {
			for i, want := range []bool{false, true} {
				if s, err := c.Stage(ctx, key, bytes.NewReader(data)); err != nil || s.Reused != want {
					t.Fatalf("Stage %d: %+v, %v; want Reused %v", i, s, err, want)
				}
			}
			info, seq, err := lastMeta(ctx, stream, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := purgeUpTo(ctx, stream, metaSubject(key), seq+1); err != nil {
				t.Fatal(err)
			}
			if c.reuse(ctx, stream, info, time.Now(), seq) {
				t.Error("reused with the meta it read gone")
			}
			if _, _, err := lastMeta(ctx, stream, key); !errors.Is(err, ErrNotFound) {
				t.Errorf("a meta was written: %v", err)
			}
			s, err := c.Stage(ctx, key, bytes.NewReader(data))
			if err != nil || s.Reused {
				t.Fatalf("Stage without a meta: %+v, %v; want a new upload", s, err)
			}
			if got, _ := readStaged(t, c, key); !bytes.Equal(got, data) {
				t.Errorf("after the new upload: %q", got)
			}
		})
	}
}

// TestStageReuseAges: reused content is as old as its first chunk, the
// first to expire (for a scoped upload of several chunks, not its commit,
// the last); and a reuse whose meta another reuse replaced meanwhile (two
// runners of one builder) still reuses.
func TestStageReuseAges(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, 30*time.Second)
	_, stream, err := c.staging(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(7, 2*stageChunkSize+10)
	key := ScopedKey(narKey(data), "builder")
	if _, err := c.Stage(ctx, key, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	scope, _ := KeyScope(key)
	id := scopedChunkID(key, scope)
	sum := sha256.Sum256(data)
	got, err := c.hashScoped(ctx, ctx, stream, id, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	commit, err := stream.GetLastMsgForSubject(ctx, stagingChunksPrefix+id)
	if err != nil {
		t.Fatal(err)
	}
	if !got.stored.Before(commit.Time) {
		t.Errorf("content of 3 chunks dated %s, its commit (the last) %s: want its first chunk's", got.stored, commit.Time)
	}

	info, seq, err := lastMeta(ctx, stream, key)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := c.Stage(ctx, key, bytes.NewReader(data)); err != nil || !s.Reused {
		t.Fatalf("reuse: %+v, %v", s, err)
	}
	if !c.reuse(ctx, stream, info, time.Now(), seq) {
		t.Error("a reuse whose meta another reuse of the same content replaced refused")
	}
}

package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
)

// poison plays a publisher that stages garbage under key ahead of the
// honest one, with a meta whose digest header claims the key's content
// (issue 11, finding 5): chunks of its own, a forged digest.
func poison(t *testing.T, c *Conn, key string, claimed []byte, chunkID string) {
	t.Helper()
	garbage := []byte("garbage from another publisher")
	if _, err := c.js.Publish(testctx.New(t, 30*time.Second), stagingChunksPrefix+chunkID, garbage); err != nil {
		t.Fatal(err)
	}
	publishMeta(t, c, &jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: key, Opts: &jetstream.ObjectMetaOptions{ChunkSize: stageChunkSize}},
		Bucket:     BucketStaging, NUID: chunkID, Size: uint64(len(claimed)), Chunks: 1,
		Digest: objectDigest(claimed),
	})
}

// TestStagePoisonedKey: a key pre-poisoned with garbage and a forged
// digest header is not reused: the honest Stage reads it back, finds it
// is not what the key names, and stages over it; a reader then gets the
// honest content. Small (one chunk) and large objects alike.
func TestStagePoisonedKey(t *testing.T) {
	_, c := setup(t)
	for _, size := range []int{1000, 3 * stageChunkSize / 2} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			honest := randomBytes(uint64(size), size)
			key := narKey(honest)
			poison(t, c, key, honest, fmt.Sprintf("POISON%d", size))
			info, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest))
			if err != nil {
				t.Fatal(err)
			}
			if info.Reused {
				t.Fatal("Stage reused a poisoned object")
			}
			if got, _ := readStaged(t, c, key); !bytes.Equal(got, honest) {
				t.Fatal("staged content is not the honest one")
			}
			// The honest object, now verified, is reused.
			if info, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest)); err != nil || !info.Reused {
				t.Fatalf("second Stage: %+v %v", info, err)
			}
		})
	}
}

// TestStageScoped: an object under a scoped key is read from its scope's
// chunks: a forged meta (garbage chunks elsewhere, a digest claiming the
// content) changes nothing for readers, content under a forged meta is
// not reused, and after a failed upload a full one is what readers get.
func TestStageScoped(t *testing.T) {
	_, c := setup(t)
	for _, size := range []int{1000, 5*stageChunkSize/2 + 7} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			honest := randomBytes(uint64(size)+1, size)
			key := ScopedKey(narKey(honest), "honest-builder")
			if _, ok := KeyScope(key); !ok {
				t.Fatalf("%s has no scope", key)
			}
			// Pre-poisoned before the honest builder stages.
			poison(t, c, key, honest, StagingScope("evil")+".x1")
			info, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest))
			if err != nil || info.Reused {
				t.Fatalf("Stage over a poisoned meta: %+v %v", info, err)
			}
			// Overwritten after.
			poison(t, c, key, honest, StagingScope("evil")+".x2")
			got, si := readStaged(t, c, key)
			if !bytes.Equal(got, honest) || si.Size != uint64(size) {
				t.Fatalf("read %d bytes (size %d), want the honest %d", len(got), si.Size, size)
			}
			// Restaged under the forged meta: uploaded again, since
			// staging GC, which goes by metas, would take chunks no meta
			// names; then, under its own meta, reused.
			for i, want := range []bool{false, true} {
				if info, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest)); err != nil || info.Reused != want {
					t.Fatalf("restage %d: %+v %v; want Reused %v", i, info, err, want)
				}
			}
			// A failed upload, then a full one: only the last counts. (A
			// key that is not content-addressed: it is never reused.)
			key = ScopedKey(fmt.Sprintf("closure/x-%d", size), "honest-builder")
			if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest[:size/3])); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Stage(testctx.New(t, 30*time.Second), key, io.MultiReader(bytes.NewReader(honest[:size/2]), iotest.ErrReader(errors.New("dump failed")))); err == nil {
				t.Fatal("failed upload succeeded")
			}
			if info, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest)); err != nil || info.Reused {
				t.Fatalf("upload after a failed one: %+v %v", info, err)
			}
			if got, _ := readStaged(t, c, key); !bytes.Equal(got, honest) {
				t.Fatal("content after re-upload is not the honest one")
			}
		})
	}
	if _, ok := KeyScope("nar/abc@" + StagingScope("x")[:31] + "g"); ok {
		t.Error("KeyScope accepted a non-hex scope")
	}
}

// TestStageScopedForgedChunks: a builder's scope holds content that
// hashes to its key but was not staged as Stage stages it: a short chunk
// before the last (so the size openScoped derives is wrong), or a last
// chunk whose Provenix-Chunks count is too low or too high, in either
// layout, or a commit naming an upload id that is no subject token. Staging the key again ends with the
// content and its size, on either server: nothing the forgery claims is
// reused.
func TestStageScopedForgedChunks(t *testing.T) {
	_, current := setup(t)
	debian := connect(t, testnats.Start(t, t.TempDir(), "", false).URL)
	if err := debian.EnsureStreams(context.Background(), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(5, stageChunkSize+1000)
	for _, c := range []*Conn{current, debian} {
		for _, tt := range []struct {
			name   string
			cut    int
			count  string
			upload string
			first  string // where a commit's first chunk goes: after id + "."
		}{
			{"short first chunk", 10, "2", "", ""},
			{"count too low", stageChunkSize, "1", "", ""},
			{"count too high", stageChunkSize, "5", "", ""},
			{"short first chunk, commit", 10, "2", "FORGED", "FORGED"},
			{"count too low, commit", stageChunkSize, "1", "FORGED", "FORGED"},
			{"count too high, commit", stageChunkSize, "5", "FORGED", "FORGED"},
			// Where the id, read as a wildcard, would find it.
			{"upload id not a token, commit", stageChunkSize, "2", "f.>", "f.x"},
		} {
			t.Run(c.nc.ConnectedServerVersion()+"/"+tt.name, func(t *testing.T) {
				key := ScopedKey(narKey(data), "builder")
				id := scopedChunkID(key, StagingScope("builder"))
				subj := stagingChunksPrefix + id
				for i, part := range [][]byte{data[:tt.cut], data[tt.cut:]} {
					m := &nats.Msg{Subject: subj, Data: part, Header: nats.Header{}}
					if tt.upload != "" {
						m.Header.Set(uploadHeader, tt.upload)
						if i == 0 {
							m.Subject = uploadSubject(id, tt.first)
						}
					}
					if i == 1 {
						m.Header.Set(chunksHeader, tt.count)
					}
					if _, err := c.js.PublishMsg(testctx.New(t, 30*time.Second), m); err != nil {
						t.Fatal(err)
					}
				}
				info, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data))
				if err != nil || info.Size != uint64(len(data)) || info.Reused {
					t.Fatalf("Stage over forged chunks: %+v %v", info, err)
				}
				if got, si := readStaged(t, c, key); !bytes.Equal(got, data) || si.Size != uint64(len(data)) {
					t.Fatalf("read %d bytes (size %d), want %d", len(got), si.Size, len(data))
				}
			})
		}
	}
}

// TestCollectStagingKeepsScoped: a scoped object whose meta someone
// overwrote is not taken for orphan chunks by the garbage collector.
func TestCollectStagingKeepsScoped(t *testing.T) {
	_, c := setup(t)
	honest := randomBytes(9, 1000)
	key := ScopedKey(narKey(honest), "b")
	if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(honest)); err != nil {
		t.Fatal(err)
	}
	poison(t, c, key, honest, StagingScope("evil")+".y")
	if _, err := c.CollectStaging(testctx.New(t, 30*time.Second), StagingGCOptions{Grace: time.Nanosecond, Now: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if got, _ := readStaged(t, c, key); !bytes.Equal(got, honest) {
		t.Fatal("scoped content collected")
	}
	if err := c.DeleteStaged(testctx.New(t, 30*time.Second), key); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after DeleteStaged: %v", err)
	}
}

// TestOpenScopedRequests: a scoped object of one chunk opens with one
// direct get, of its subject's last message, which says how many chunks
// the upload wrote; one of more chunks adds a read of each other chunk.
// No stream info: its answer and audit advisory cost the server far
// more. The same on the current server and on Debian 12's 2.9.10. Chunks
// staged before uploads carried an id are read as before, and those
// before the count through a stream info.
func TestOpenScopedRequests(t *testing.T) {
	_, current := setup(t)
	old := testnats.Start(t, t.TempDir(), "", false)
	debian := connect(t, old.URL)
	if err := debian.EnsureStreams(context.Background(), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Conn{current, debian} {
		spy, err := nats.Connect(c.nc.ConnectedUrl())
		if err != nil {
			t.Fatal(err)
		}
		defer spy.Close()
		requests, err := spy.SubscribeSync(jsAPI + ">")
		if err != nil {
			t.Fatal(err)
		}
		if err := spy.Flush(); err != nil {
			t.Fatal(err)
		}
		count := func() (infos, gets int) {
			t.Helper()
			if err := spy.Flush(); err != nil {
				t.Fatal(err)
			}
			for {
				m, err := requests.NextMsg(50 * time.Millisecond)
				if err != nil {
					return infos, gets
				}
				switch {
				case strings.HasPrefix(m.Subject, jsAPI+"STREAM.INFO."):
					infos++
				case strings.HasPrefix(m.Subject, jsAPI+"DIRECT.GET."):
					gets++
				}
			}
		}
		for _, size := range []int{1, stageChunkSize, stageChunkSize + 1, 3*stageChunkSize + 5} {
			t.Run(fmt.Sprintf("%s/size=%d", c.nc.ConnectedServerVersion(), size), func(t *testing.T) {
				data := randomBytes(uint64(size)+9, size)
				key := ScopedKey(fmt.Sprintf("closure/requests-%d", size), "builder")
				if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data)); err != nil {
					t.Fatal(err)
				}
				count()
				got, info := readStaged(t, c, key)
				if !bytes.Equal(got, data) || info.Size != uint64(size) {
					t.Fatalf("read %d bytes, size %d; staged %d", len(got), info.Size, size)
				}
				infos, gets := count()
				chunks := (size + stageChunkSize - 1) / stageChunkSize
				// The last (which counts the chunks), then each other.
				wantInfos, wantGets := 0, chunks
				if infos != wantInfos || gets != wantGets {
					t.Errorf("%d chunks opened and read with %d stream infos and %d direct gets, want %d and %d", chunks, infos, gets, wantInfos, wantGets)
				}
			})
		}
		// Staged by earlier versions: all chunks of one upload alone on
		// the subject (each upload rolled up the one before), with the
		// count on the last or without it.
		for _, counted := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/before-upload-ids/counted=%v", c.nc.ConnectedServerVersion(), counted), func(t *testing.T) {
				key := ScopedKey(fmt.Sprintf("closure/requests-legacy-%v", counted), "builder")
				data := randomBytes(77, 3*stageChunkSize+5)
				subj := stagingChunksPrefix + scopedChunkID(key, StagingScope("builder"))
				for i := 0; i < len(data); i += stageChunkSize {
					m := &nats.Msg{Subject: subj, Data: data[i:min(i+stageChunkSize, len(data))], Header: nats.Header{}}
					if counted && i+stageChunkSize >= len(data) {
						m.Header.Set(chunksHeader, "4")
					}
					if _, err := c.js.PublishMsg(testctx.New(t, 30*time.Second), m); err != nil {
						t.Fatal(err)
					}
				}
				count()
				got, info := readStaged(t, c, key)
				if !bytes.Equal(got, data) || info.Size != uint64(len(data)) {
					t.Fatalf("read %d bytes, size %d; staged %d", len(got), info.Size, len(data))
				}
				wantInfos := 1
				if counted {
					wantInfos = 0
				}
				if infos, gets := count(); infos != wantInfos || gets != 5 {
					t.Errorf("opened and read with %d stream infos and %d direct gets, want %d and 5", infos, gets, wantInfos)
				}
			})
		}
		if _, _, err := c.OpenStaged(testctx.New(t, 30*time.Second), ScopedKey("closure/never-staged", "builder")); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: never staged: %v, want ErrNotFound", c.nc.ConnectedServerVersion(), err)
		}
	}
}

// TestStageScopedInterleavedUploads: uploads of one key at once (two
// runners of one builder staging the same path) write their chunks at
// the same time; readers get the last committed upload whole, whichever
// it is; one that did not finish (its commit never written) changes
// nothing; a chunk missing from the committed upload is corrupt, not
// filled in from another. Before uploads were commits, the second upload
// rolled up the chunks the first had written so far, and readers took
// the first chunks of the subject: an honest builder's result was
// rejected as a bad NAR.
func TestStageScopedInterleavedUploads(t *testing.T) {
	_, current := setup(t)
	debian := connect(t, testnats.Start(t, t.TempDir(), "", false).URL)
	if err := debian.EnsureStreams(context.Background(), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	a, b := randomBytes(21, 3*stageChunkSize-9), randomBytes(22, 3*stageChunkSize-9)
	for _, c := range []*Conn{current, debian} {
		for _, tt := range []struct {
			name  string
			order string // whose chunk is written next: "a" or "b" (each's third is its commit)
			want  []byte
			drop  int // a chunk of b not written
		}{
			{"b last", "ababab", b, -1},
			{"a last", "abbaba", a, -1},
			{"b unfinished", "aabab", a, -1},
			{"a chunk of b missing", "aabbb", nil, 1},
		} {
			t.Run(c.nc.ConnectedServerVersion()+"/"+tt.name, func(t *testing.T) {
				key := ScopedKey("closure/interleaved-"+strings.ReplaceAll(tt.name, " ", "-"), "builder")
				id := scopedChunkID(key, StagingScope("builder"))
				next := map[byte]int{}
				content := map[byte][]byte{'a': a, 'b': b}
				for i := 0; i < len(tt.order); i++ {
					u := tt.order[i]
					k := next[u]
					next[u]++
					data := content[u]
					upload := strings.ToUpper(strings.Repeat(string(u), 26))
					m := &nats.Msg{Subject: uploadSubject(id, upload), Data: data[k*stageChunkSize : min((k+1)*stageChunkSize, len(data))],
						Header: nats.Header{uploadHeader: []string{upload}}}
					if (k+1)*stageChunkSize >= len(data) {
						m.Subject = stagingChunksPrefix + id
						m.Header.Set(chunksHeader, "3")
					}
					if u == 'b' && k == tt.drop {
						continue
					}
					if _, err := c.js.PublishMsg(testctx.New(t, 30*time.Second), m); err != nil {
						t.Fatal(err)
					}
				}
				rc, info, err := c.OpenStaged(testctx.New(t, 30*time.Second), key)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if tt.want == nil {
					if !errors.Is(err, ErrCorrupt) {
						t.Fatalf("read %d bytes, %v; want ErrCorrupt", len(got), err)
					}
					return
				}
				if err != nil || !bytes.Equal(got, tt.want) || info.Size != uint64(len(tt.want)) {
					t.Fatalf("read %d bytes (size %d), %v; want the last upload's %d", len(got), info.Size, err, len(tt.want))
				}
			})
		}
		// The same through Stage itself: two connections upload the key
		// again and again at once, and every read gets it whole.
		t.Run(c.nc.ConnectedServerVersion()+"/concurrent Stage", func(t *testing.T) {
			other := connect(t, c.nc.ConnectedUrl())
			key := ScopedKey("closure/concurrent", "builder")
			for range 10 {
				var wg sync.WaitGroup
				for _, s := range []*Conn{c, other} {
					wg.Go(func() {
						if _, err := s.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(a)); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
				if got, _ := readStaged(t, c, key); !bytes.Equal(got, a) {
					t.Fatal("read after two uploads at once is not the content")
				}
			}
		})
	}
}

// TestCollectStagingUploads: uploads of a scoped key that are no longer
// its last commit, and one never committed (its runner stopped), are
// collected once older than Grace and StagingTimeout; the current one
// stays readable, and earlier commits and metas of the key go; deleting
// the key removes every upload's chunks.
func TestCollectStagingUploads(t *testing.T) {
	_, c := setup(t)
	key := ScopedKey("closure/gc-uploads", "b")
	id := scopedChunkID(key, StagingScope("b"))
	var data []byte
	for i := range 3 {
		data = randomBytes(uint64(40+i), 2*stageChunkSize+i)
		if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	stopped := uploadSubject(id, "STOPPED")
	if _, err := c.js.PublishMsg(testctx.New(t, 30*time.Second), &nats.Msg{Subject: stopped, Data: make([]byte, stageChunkSize),
		Header: nats.Header{uploadHeader: []string{"STOPPED"}}}); err != nil {
		t.Fatal(err)
	}
	uploads := func() int {
		t.Helper()
		si, err := c.stagingStream.Info(testctx.New(t, 30*time.Second), jetstream.WithSubjectFilter(stagingChunksPrefix+id+".>"))
		if err != nil {
			t.Fatal(err)
		}
		return len(si.State.Subjects)
	}
	if n := uploads(); n != 4 {
		t.Fatalf("%d upload subjects before collecting, want 4", n)
	}
	// Within StagingTimeout an upload may still commit, whatever Grace.
	rep, err := c.CollectStaging(testctx.New(t, 30*time.Second), StagingGCOptions{Grace: time.Nanosecond, Now: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Orphans) != 0 || uploads() != 4 {
		t.Errorf("collected %+v, %d upload subjects left; want none collected yet", rep.Orphans, uploads())
	}
	rep, err = c.CollectStaging(testctx.New(t, 30*time.Second), StagingGCOptions{Grace: time.Nanosecond, Now: time.Now().Add(StagingTimeout + time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Orphans) != 3 || uploads() != 1 {
		t.Errorf("collected %+v, %d upload subjects left; want 3 collected and the current one left", rep.Orphans, uploads())
	}
	// The key's subject and its meta keep their last message only: the
	// commit readers take, and the meta.
	for _, subj := range []string{stagingChunksPrefix + id, metaSubject(key)} {
		si, err := c.stagingStream.Info(testctx.New(t, 30*time.Second), jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		if n := si.State.Subjects[subj]; n != 1 {
			t.Errorf("%s holds %d messages after collecting, want 1", subj, n)
		}
	}
	if got, _ := readStaged(t, c, key); !bytes.Equal(got, data) {
		t.Fatal("the current upload is not readable after collecting")
	}
	if err := c.DeleteStaged(testctx.New(t, 30*time.Second), key); err != nil {
		t.Fatal(err)
	}
	if n := uploads(); n != 0 {
		t.Errorf("%d upload subjects left after DeleteStaged", n)
	}
}

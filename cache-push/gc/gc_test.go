package gc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/internal/testctx"
)

const day = 24 * time.Hour

// testCache is a local store in a temporary directory whose objects get
// hand-set modification times.
type testCache struct {
	t   *testing.T
	st  *local.Store
	now time.Time
}

func newTestCache(t *testing.T) *testCache {
	st, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &testCache{t: t, st: st, now: time.Now()}
}

// storePath makes a valid store path for name, as cache-push's tests do.
func storePath(name string) string {
	h := sha256.Sum256([]byte(name))
	return "/nix/store/" + nixbase32.EncodeToString(h[:20]) + "-" + name
}

func hashPart(sp string) string { return path.Base(sp)[:32] }

// put writes key with content and modification time now-age.
func (c *testCache) put(key string, content []byte, age time.Duration) {
	c.t.Helper()
	if err := store.Put(testctx.New(c.t, 30*time.Second), c.st, key, bytes.NewReader(content)); err != nil {
		c.t.Fatal(err)
	}
	mt := c.now.Add(-age)
	if err := os.Chtimes(filepath.Join(c.st.Dir(), filepath.FromSlash(key)), mt, mt); err != nil {
		c.t.Fatal(err)
	}
}

// add pushes a path the way the pusher lays it out (NAR, sidecar,
// narinfo), all aged age, and returns its store path and NAR key.
func (c *testCache) add(name string, age time.Duration, refs ...string) (string, string) {
	c.t.Helper()
	sp := storePath(name)
	nar := []byte("nar of " + name)
	sum := sha256.Sum256(nar)
	narKey := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar.zst"
	ni := &narinfo.NarInfo{
		StorePath:   sp,
		URL:         narKey,
		Compression: "zstd",
		FileHash:    nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true),
		FileSize:    uint64(len(nar)),
		NarHash:     nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true),
		NarSize:     uint64(len(nar)),
	}
	for _, r := range refs {
		ni.References = append(ni.References, path.Base(r))
	}
	if err := ni.Check(); err != nil {
		c.t.Fatal(err)
	}
	c.put(narKey, nar, age)
	c.put(hashPart(sp)+".provenance.json", []byte(`{"version":1}`), age)
	c.put(hashPart(sp)+".narinfo", []byte(ni.String()), age)
	return sp, narKey
}

func (c *testCache) exists(key string) bool {
	_, err := c.st.Stat(context.Background(), key)
	return err == nil
}

func (c *testCache) keys() []string {
	var ks []string
	c.st.List(context.Background(), "", func(i store.Info) error {
		ks = append(ks, i.Key)
		return nil
	})
	slices.Sort(ks)
	return ks
}

func collectedPaths(r *Report) []string {
	var out []string
	for _, p := range r.Paths {
		out = append(out, p.StorePath)
	}
	return out
}

func TestReferencesKeepOldPaths(t *testing.T) {
	c := newTestCache(t)
	libc, libcNAR := c.add("libc", 30*day)
	app, _ := c.add("app", time.Hour, libc) // fresh: a root
	old, oldNAR := c.add("old", 30*day)
	oldDep, _ := c.add("old-dep", 30*day)
	oldTop, _ := c.add("old-top", 30*day, oldDep, old)

	rep, err := Run(testctx.New(t, 30*time.Second), c.st, Options{MaxAge: 7 * day, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range []string{libc, app} {
		if !c.exists(hashPart(sp) + ".narinfo") {
			t.Errorf("%s was collected", sp)
		}
	}
	if !c.exists(libcNAR) {
		t.Errorf("the NAR of kept %s was collected", libc)
	}
	for _, sp := range []string{old, oldDep, oldTop} {
		for _, k := range []string{".narinfo", ".provenance.json"} {
			if c.exists(hashPart(sp) + k) {
				t.Errorf("%s%s survived", hashPart(sp), k)
			}
		}
	}
	if c.exists(oldNAR) {
		t.Errorf("NAR of %s survived", old)
	}
	got := collectedPaths(rep)
	// A referrer goes before what it references.
	if i, j := slices.Index(got, oldTop), slices.Index(got, oldDep); i < 0 || j < 0 || i > j {
		t.Errorf("deletion order %v: %s must precede %s", got, oldTop, oldDep)
	}
	if len(got) != 3 || rep.Kept != 2 || rep.Narinfos != 5 {
		t.Errorf("report: %+v", rep)
	}
	for _, p := range rep.Paths {
		if len(p.Objects) != 3 || !strings.HasSuffix(p.Objects[0].Key, ".narinfo") ||
			!strings.HasSuffix(p.Objects[1].Key, ".provenance.json") || !strings.HasPrefix(p.Objects[2].Key, "nar/") {
			t.Errorf("objects of %s not narinfo, sidecar, NAR: %+v", p.StorePath, p.Objects)
		}
	}
	if rep.BytesFreed <= 0 {
		t.Errorf("BytesFreed = %d", rep.BytesFreed)
	}
}

func TestKeepListClosure(t *testing.T) {
	c := newTestCache(t)
	dep, _ := c.add("dep", 90*day)
	top, _ := c.add("top", 90*day, dep)
	other, _ := c.add("other", 90*day)
	keep, err := ParseKeepFile(strings.NewReader("# pinned\n" + top + "\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	missing := storePath("gone")
	keep = append(keep, path.Base(missing))
	rep, err := Run(testctx.New(t, 30*time.Second), c.st, Options{Keep: keep, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	if !c.exists(hashPart(top)+".narinfo") || !c.exists(hashPart(dep)+".narinfo") {
		t.Error("keep-listed closure collected")
	}
	if c.exists(hashPart(other) + ".narinfo") {
		t.Error("unlisted old path kept")
	}
	if !slices.Equal(rep.MissingKeep, []string{hashPart(missing)}) {
		t.Errorf("MissingKeep = %v", rep.MissingKeep)
	}
	if _, err := ParseKeepFile(strings.NewReader("not a path\n")); err == nil {
		t.Error("bad keep file accepted")
	}
}

func TestOrphanGrace(t *testing.T) {
	c := newTestCache(t)
	c.add("kept", time.Hour)
	c.put("nar/"+strings.Repeat("0", 52)+".nar.zst", []byte("interrupted push"), 2*day)
	c.put("nar/"+strings.Repeat("1", 52)+".nar.zst", []byte("push in progress"), time.Minute)
	sp := storePath("half")
	c.put(hashPart(sp)+".provenance.json", []byte("{}"), 2*day)

	opts := Options{MaxAge: 7 * day, Grace: day, Now: c.now}
	rep, err := Run(testctx.New(t, 30*time.Second), c.st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.exists("nar/" + strings.Repeat("0", 52) + ".nar.zst") {
		t.Error("old orphan NAR kept")
	}
	if c.exists(hashPart(sp) + ".provenance.json") {
		t.Error("old orphan sidecar kept")
	}
	if !c.exists("nar/" + strings.Repeat("1", 52) + ".nar.zst") {
		t.Error("orphan NAR within grace collected")
	}
	if len(rep.Orphans) != 2 || len(rep.Paths) != 0 {
		t.Errorf("report: %+v", rep)
	}

	// Once past the grace period, it goes too.
	opts.Now = c.now.Add(day)
	if _, err := Run(testctx.New(t, 30*time.Second), c.st, opts); err != nil {
		t.Fatal(err)
	}
	if c.exists("nar/" + strings.Repeat("1", 52) + ".nar.zst") {
		t.Error("orphan NAR past grace kept")
	}
}

func TestDryRun(t *testing.T) {
	c := newTestCache(t)
	dep, _ := c.add("dep", 30*day)
	c.add("top", time.Hour, dep)
	c.add("old", 30*day)
	c.add("old2", 30*day)
	c.put("nar/"+strings.Repeat("2", 52)+".nar.zst", []byte("orphan"), 3*day)
	before := c.keys()

	opts := Options{MaxAge: 7 * day, Now: c.now, DryRun: true}
	dry, err := Run(testctx.New(t, 30*time.Second), c.st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if after := c.keys(); !slices.Equal(before, after) {
		t.Fatalf("dry run changed the cache:\n%v\n%v", before, after)
	}
	if !dry.DryRun || len(dry.Paths) != 2 || len(dry.Orphans) != 1 {
		t.Fatalf("dry report: %+v", dry)
	}
	opts.DryRun = false
	real, err := Run(testctx.New(t, 30*time.Second), c.st, opts)
	if err != nil {
		t.Fatal(err)
	}
	real.DryRun = true
	if !equalReports(dry, real) {
		t.Errorf("dry run %+v, real run %+v", dry, real)
	}
}

func equalReports(a, b *Report) bool {
	if a.BytesFreed != b.BytesFreed || a.Kept != b.Kept || !slices.Equal(a.Orphans, b.Orphans) || len(a.Paths) != len(b.Paths) {
		return false
	}
	for i := range a.Paths {
		if a.Paths[i].StorePath != b.Paths[i].StorePath || !slices.Equal(a.Paths[i].Objects, b.Paths[i].Objects) {
			return false
		}
	}
	return true
}

func TestMalformedKept(t *testing.T) {
	c := newTestCache(t)
	dep, depNAR := c.add("dep", 30*day)
	// Garbled, but its URL and References lines are readable.
	bad := storePath("bad")
	c.put(hashPart(bad)+".narinfo", []byte("StorePath: nonsense\nURL: "+depNAR+"\nReferences: "+path.Base(dep)+"\n"), 30*day)
	// Unreadable URL: orphan NARs cannot be told apart.
	worse := storePath("worse")
	c.put(hashPart(worse)+".narinfo", []byte("garbage"), 30*day)
	orphan := "nar/" + strings.Repeat("3", 52) + ".nar.zst"
	c.put(orphan, []byte("orphan?"), 30*day)

	rep, err := Run(testctx.New(t, 30*time.Second), c.st, Options{MaxAge: 7 * day, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{hashPart(bad) + ".narinfo", hashPart(worse) + ".narinfo", hashPart(dep) + ".narinfo", depNAR, orphan} {
		if !c.exists(k) {
			t.Errorf("%s collected", k)
		}
	}
	if len(rep.Malformed) != 2 || rep.OrphansSkipped == "" || len(rep.Paths) != 0 {
		t.Errorf("report: %+v", rep)
	}
}

func TestNoKeepRule(t *testing.T) {
	c := newTestCache(t)
	if _, err := Run(testctx.New(t, 30*time.Second), c.st, Options{}); err != ErrNoKeepRule {
		t.Errorf("err = %v, want ErrNoKeepRule", err)
	}
}

// publishOnDelete publishes a narinfo (as a pusher would, having found
// its reference visible a moment before) when GC deletes the narinfo
// that reference names.
type publishOnDelete struct {
	store.Store
	c            *testCache
	trigger      string
	name, refers string
	done         bool
}

func (s *publishOnDelete) Delete(ctx context.Context, key string) error {
	if key == s.trigger && !s.done {
		s.done = true
		s.c.add(s.name, 0, s.refers)
	}
	return s.Store.Delete(ctx, key)
}

// visibleClosed fails if a visible narinfo refers to a path whose
// narinfo is not visible.
func visibleClosed(t *testing.T, c *testCache) {
	t.Helper()
	for _, k := range c.keys() {
		if !strings.HasSuffix(k, ".narinfo") {
			continue
		}
		b, err := store.ReadAll(testctx.New(t, 30*time.Second), c.st, k, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.Parse(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ni.References {
			if !c.exists(r[:32] + ".narinfo") {
				t.Errorf("visible %s refers to %s, which is not", ni.StorePath, r)
			}
		}
	}
}

// TestNoVisibleNarinfoMissesAReference: whatever GC collects, every
// narinfo left visible has all its references visible — including one a
// pusher published during the run, referring to a path GC was deleting.
func TestNoVisibleNarinfoMissesAReference(t *testing.T) {
	c := newTestCache(t)
	base, _ := c.add("base", 30*day)
	mid, _ := c.add("mid", 30*day, base)
	c.add("top", 30*day, mid, storePath("top"))
	live, _ := c.add("live", time.Hour, base, storePath("live"))
	rep, err := Run(testctx.New(t, 30*time.Second), c.st, Options{MaxAge: 7 * day, Grace: time.Minute, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	visibleClosed(t, c)
	if !c.exists(hashPart(live)+".narinfo") || !c.exists(hashPart(base)+".narinfo") || c.exists(hashPart(mid)+".narinfo") {
		t.Fatalf("collected %v", collectedPaths(rep))
	}
	if len(rep.Withdrawn) != 0 {
		t.Fatalf("withdrawn %+v without a concurrent publish", rep.Withdrawn)
	}

	// Now the late narinfo refers to a path GC does collect.
	c2 := newTestCache(t)
	old, _ := c2.add("old", 30*day)
	c2.add("old-top", 30*day, old)
	hook2 := &publishOnDelete{Store: c2.st, c: c2, trigger: hashPart(old) + ".narinfo", name: "late", refers: old}
	rep, err = Run(testctx.New(t, 30*time.Second), hook2, Options{MaxAge: 7 * day, Grace: time.Minute, Now: c2.now})
	if err != nil {
		t.Fatal(err)
	}
	if !hook2.done {
		t.Fatal("the concurrent publish did not happen")
	}
	visibleClosed(t, c2)
	if len(rep.Withdrawn) != 1 || rep.Withdrawn[0].StorePath != storePath("late") {
		t.Fatalf("withdrawn %+v, want the late narinfo", rep.Withdrawn)
	}
	// Its NAR and sidecar stay (younger than Grace) for a re-push.
	if ks := c2.keys(); len(ks) != 2 {
		t.Fatalf("left: %v", ks)
	}
}

// TestVSACollected: a collected path's verification summary goes with
// it, a kept path's stays, and an orphan summary (an interrupted push
// writes it before the narinfo) goes once past the grace period.
func TestVSACollected(t *testing.T) {
	c := newTestCache(t)
	kept, _ := c.add("kept", time.Hour)
	old, _ := c.add("old", 30*day)
	for _, sp := range []string{kept, old} {
		c.put(hashPart(sp)+".vsa.json", []byte(`{}`), 30*day)
	}
	half, fresh := storePath("half"), storePath("fresh-half")
	c.put(hashPart(half)+".vsa.json", []byte(`{}`), 2*day)
	c.put(hashPart(fresh)+".vsa.json", []byte(`{}`), time.Minute)

	rep, err := Run(testctx.New(t, 30*time.Second), c.st, Options{MaxAge: 7 * day, Grace: day, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	if !c.exists(hashPart(kept) + ".vsa.json") {
		t.Error("the VSA of a kept path was collected")
	}
	if c.exists(hashPart(old) + ".vsa.json") {
		t.Error("the VSA of a collected path survived")
	}
	if c.exists(hashPart(half) + ".vsa.json") {
		t.Error("an orphan VSA past the grace period survived")
	}
	if !c.exists(hashPart(fresh) + ".vsa.json") {
		t.Error("an orphan VSA within the grace period (a push in progress) was collected")
	}
	if len(rep.Paths) != 1 || !slices.ContainsFunc(rep.Paths[0].Objects, func(o Object) bool { return strings.HasSuffix(o.Key, ".vsa.json") }) {
		t.Errorf("report: %+v", rep.Paths)
	}
}

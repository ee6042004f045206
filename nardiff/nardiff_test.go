package nardiff

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

var build = time.Date(2026, 12, 6, 2, 0, 0, 0, time.UTC)

func opts() Options { return Options{BuildTime: build} }

func TestIdentical(t *testing.T) {
	n := narOf(t, ent{path: "/a", data: "x"}, ent{path: "/b", dir: true}, ent{path: "/b/c", link: "../a"})
	r := diffBytes(t, n, n, opts())
	if !r.Identical() || len(r.Files) != 0 || r.EntriesA != 4 || r.EntriesB != 4 {
		t.Fatalf("identical NARs reported different:\n%s", r.Text())
	}
}

func TestStructure(t *testing.T) {
	a := narOf(t,
		ent{path: "/bin", dir: true}, ent{path: "/bin/x", data: "same", exec: true},
		ent{path: "/gone", data: "only in a"}, ent{path: "/link", link: "bin/x"}, ent{path: "/t", data: "file"})
	b := narOf(t,
		ent{path: "/bin", dir: true}, ent{path: "/bin/x", data: "same"},
		ent{path: "/link", link: "bin/y"}, ent{path: "/new", data: "only in b"}, ent{path: "/t", dir: true})
	r := diffBytes(t, a, b, opts())
	for path, kind := range map[string]Kind{"/bin/x": Mode, "/gone": OnlyA, "/link": Symlink, "/new": OnlyB, "/t": Type} {
		if f := file(t, r, path); f.Kind != kind {
			t.Errorf("%s: kind %s, want %s", path, f.Kind, kind)
		}
	}
	if r.Differing != 5 {
		t.Errorf("differing = %d, want 5:\n%s", r.Differing, r.Text())
	}
}

func TestTextTimestamp(t *testing.T) {
	a := narOf(t, ent{path: "/share", dir: true}, ent{path: "/share/info", data: "name=hello\nbuilt=Sun Dec  6 02:05:19 UTC 2026\nversion=1\n"})
	b := narOf(t, ent{path: "/share", dir: true}, ent{path: "/share/info", data: "name=hello\nbuilt=Sun Dec  6 02:07:44 UTC 2026\nversion=1\n"})
	r := diffBytes(t, a, b, opts())
	f := file(t, r, "/share/info")
	if f.Format != "text" || !hasCause(f.Causes, CauseTimestamp) {
		t.Fatalf("want a text diff with a timestamp cause:\n%s", r.Text())
	}
	mustContain(t, f.Unified, "-built=Sun Dec  6 02:05:19 UTC 2026")
	mustContain(t, f.Unified, "+built=Sun Dec  6 02:07:44 UTC 2026")
	if f.A.SHA256 == "" || f.A.SHA256 == f.B.SHA256 || f.A.Size != f.B.Size {
		t.Errorf("sides: %+v %+v", f.A, f.B)
	}
	s := r.Summary(3)
	if len(s.Files) != 1 || s.Files[0] != "/share/info" || s.Causes[0] != CauseTimestamp {
		t.Errorf("summary %+v", s)
	}
	mustContain(t, s.String(), "/share/info; causes: timestamp")
}

func TestEpochAndISO(t *testing.T) {
	for _, c := range [][2]string{
		{"t=1796522400\n", "t=1796522461\n"},
		{"2026-12-06T02:00:00Z\n", "2026-12-07T03:00:00Z\n"},
		{"id 20261206020000\n", "id 20261206020511\n"},
		{"ns 1796522400123456789\n", "ns 1796522401987654321\n"},
	} {
		r := diffBytes(t, narOf(t, ent{path: "/f", data: c[0]}), narOf(t, ent{path: "/f", data: c[1]}), opts())
		if f := file(t, r, "/f"); !hasCause(f.Causes, CauseTimestamp) {
			t.Errorf("%q vs %q: no timestamp cause:\n%s", c[0], c[1], r.Text())
		}
	}
	// A word of letters and digits still holds one.
	r := diffBytes(t, narOf(t, ent{path: "/f", data: "build1796522400\n"}), narOf(t, ent{path: "/f", data: "build1796522461\n"}), opts())
	if f := file(t, r, "/f"); !hasCause(f.Causes, CauseTimestamp) {
		t.Errorf("no timestamp cause in a word:\n%s", r.Text())
	}
	// A number far from the build time is not a date.
	r = diffBytes(t, narOf(t, ent{path: "/f", data: "n=1000000001\n"}), narOf(t, ent{path: "/f", data: "n=1000000002\n"}), opts())
	if f := file(t, r, "/f"); hasCause(f.Causes, CauseTimestamp) {
		t.Errorf("2001 is not near the build time:\n%s", r.Text())
	}
}

func TestBuildPath(t *testing.T) {
	a := narOf(t, ent{path: "/f", data: "prefix\nsrc=/tmp/nix-build-hello-1.0.drv-0/source\n"})
	b := narOf(t, ent{path: "/f", data: "prefix\nsrc=/tmp/nix-build-hello-1.0.drv-1/source\n"})
	r := diffBytes(t, a, b, opts())
	if f := file(t, r, "/f"); !hasCause(f.Causes, CauseBuildPath) {
		t.Fatalf("no build-path cause:\n%s", r.Text())
	}
	a = narOf(t, ent{path: "/f", data: "work: /build/tmp.Xy12abCD90\n"})
	b = narOf(t, ent{path: "/f", data: "work: /build/tmp.Qq88ZZaa11\n"})
	if f := file(t, diffBytes(t, a, b, opts()), "/f"); !hasCause(f.Causes, CauseBuildPath) || hasCause(f.Causes, CauseRandom) {
		t.Fatalf("temp dir: causes %+v", f.Causes)
	}
}

func TestFileOrder(t *testing.T) {
	a := narOf(t, ent{path: "/list", data: "b.txt\na.txt\nc.txt\n"})
	b := narOf(t, ent{path: "/list", data: "c.txt\nb.txt\na.txt\n"})
	r := diffBytes(t, a, b, opts())
	f := file(t, r, "/list")
	if f.Kind != Order || !hasCause(f.Causes, CauseFileOrder) {
		t.Fatalf("want an order difference:\n%s", r.Text())
	}
}

func TestRandomID(t *testing.T) {
	a := narOf(t, ent{path: "/id", data: "seed=9f86d081884c7d65\n"})
	b := narOf(t, ent{path: "/id", data: "seed=2c26b46b68ffc68f\n"})
	if f := file(t, diffBytes(t, a, b, opts()), "/id"); !hasCause(f.Causes, CauseRandom) {
		t.Fatalf("no random-id cause: %+v", f)
	}
	// Random hex that happens to hold a run of digits near the build
	// time as epoch seconds (1840590949: April 2028) is still random, as
	// the ids of TestDiffDisputes' "random" builds were once.
	a = narOf(t, ent{path: "/id", data: "session=448c6fee0a8e96df1840590949b718d3\n"})
	b = narOf(t, ent{path: "/id", data: "session=a1dd976f60401815e0939b42ad446b12\n"})
	if f := file(t, diffBytes(t, a, b, opts()), "/id"); !hasCause(f.Causes, CauseRandom) || hasCause(f.Causes, CauseTimestamp) {
		t.Fatalf("random hex with a time-like digit run: causes %+v", f.Causes)
	}
	a = narOf(t, ent{path: "/id", data: "uuid 0b5d7e4e-3c4f-4b8a-9a55-1f0a6b6fa1c2\n"})
	b = narOf(t, ent{path: "/id", data: "uuid 7e0f40c2-8d31-4f8e-b1b6-92b8d1f6e0aa\n"})
	if f := file(t, diffBytes(t, a, b, opts()), "/id"); !hasCause(f.Causes, CauseRandom) {
		t.Fatalf("no random-id cause for a uuid: %+v", f)
	}
}

func TestRandomBytes(t *testing.T) {
	a := narOf(t, ent{path: "/seed", data: "\x8f\x01\xfe\x33\x9a\x00\x10\xc4"})
	b := narOf(t, ent{path: "/seed", data: "\x12\xa7\x05\x33\x61\xee\x00\x7b"})
	if f := file(t, diffBytes(t, a, b, opts()), "/seed"); f.Format != "binary" || !hasCause(f.Causes, CauseRandom) {
		t.Fatalf("random bytes not recognised: %+v", f)
	}
}

// TestBinaryTime: a 32-bit time that differs by a minute between the
// sides is a timestamp; random bytes whose first word reads as times
// near the build on both sides, 600 days apart, are random.
func TestBinaryTime(t *testing.T) {
	word := func(tm time.Time, rest string) string {
		return string(binary.LittleEndian.AppendUint32(nil, uint32(tm.Unix()))) + rest
	}
	a := narOf(t, ent{path: "/bin", data: word(build, "\x00\x01\x02\xff")})
	b := narOf(t, ent{path: "/bin", data: word(build.Add(time.Minute), "\x00\x01\x02\xff")})
	if f := file(t, diffBytes(t, a, b, opts()), "/bin"); !hasCause(f.Causes, CauseTimestamp) {
		t.Errorf("a time a minute apart: causes %+v", f.Causes)
	}
	a = narOf(t, ent{path: "/seed", data: word(build.Add(-300*24*time.Hour), "\x8f\x01\xfe\x33\x9a\x00\x10\xc4")})
	b = narOf(t, ent{path: "/seed", data: word(build.Add(300*24*time.Hour), "\x12\xa7\x05\x33\x61\xee\x00\x7b")})
	if f := file(t, diffBytes(t, a, b, opts()), "/seed"); hasCause(f.Causes, CauseTimestamp) || !hasCause(f.Causes, CauseRandom) {
		t.Errorf("random bytes whose first word reads as times 600 days apart: causes %+v", f.Causes)
	}
}

func TestBinaryWindow(t *testing.T) {
	da := bytes.Repeat([]byte{0, 1, 2, 3}, 100)
	db := bytes.Clone(da)
	db[201] = 0xff
	r := diffBytes(t, narOf(t, ent{path: "/bin", data: string(da)}), narOf(t, ent{path: "/bin", data: string(db)}), opts())
	f := file(t, r, "/bin")
	if f.Format != "binary" || f.Offset != 201 {
		t.Fatalf("offset %d format %s:\n%s", f.Offset, f.Format, r.Text())
	}
	mustContain(t, f.HexB, "ff")
}

func TestStreamedLargeFile(t *testing.T) {
	da := bytes.Repeat([]byte("0123456789abcdef"), 300000) // 4.8 MB
	db := bytes.Clone(da)
	db[3<<20+5] = '!'
	o := opts()
	o.Limits.MaxBuffer = 1 << 20
	r := diffBytes(t, narOf(t, ent{path: "/big", data: string(da)}), narOf(t, ent{path: "/big", data: string(db)}), o)
	f := file(t, r, "/big")
	if f.Offset != 3<<20+5 {
		t.Fatalf("offset %d:\n%s", f.Offset, r.Text())
	}
	want := func(b []byte) string { return sha(b) }
	if f.A.SHA256 != want(da) || f.B.SHA256 != want(db) {
		t.Errorf("streamed sha256 wrong: %s %s", f.A.SHA256, f.B.SHA256)
	}
	// After other entries: the contents are found again at their offset.
	r = diffBytes(t, narOf(t, ent{path: "/a", data: "x"}, ent{path: "/big", data: string(da)}), narOf(t, ent{path: "/a", data: "y"}, ent{path: "/big", data: string(db)}), o)
	if f := file(t, r, "/big"); f.A.SHA256 != want(da) || f.B.SHA256 != want(db) {
		t.Errorf("after another entry: %+v %+v", f.A, f.B)
	}
	// The same from streams that cannot be read again (as staged NARs
	// come): the prefix is hashed while comparing.
	na, nb := narOf(t, ent{path: "/big", data: string(da)}), narOf(t, ent{path: "/big", data: string(db)})
	rs, err := Diff(context.Background(), struct{ io.Reader }{bytes.NewReader(na)}, struct{ io.Reader }{bytes.NewReader(nb)}, o)
	if err != nil {
		t.Fatal(err)
	}
	if fs := file(t, rs, "/big"); fs.A.SHA256 != want(da) || fs.B.SHA256 != want(db) || fs.Offset != f.Offset {
		t.Errorf("from streams: %+v %+v offset %d", fs.A, fs.B, fs.Offset)
	}
	// Different lengths with an equal prefix.
	r = diffBytes(t, narOf(t, ent{path: "/big", data: string(da)}), narOf(t, ent{path: "/big", data: string(da[:2<<20])}), o)
	if f := file(t, r, "/big"); f.Offset != 2<<20 || f.B.SHA256 != want(da[:2<<20]) {
		t.Fatalf("truncated file: offset %d:\n%s", f.Offset, r.Text())
	}
	// Equal large files are not reported.
	if r := diffBytes(t, narOf(t, ent{path: "/big", data: string(da)}), narOf(t, ent{path: "/big", data: string(da)}), o); !r.Identical() {
		t.Fatalf("equal streamed files reported:\n%s", r.Text())
	}
}

func gz(t testing.TB, data string, mtime time.Time) string {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.ModTime = mtime
	w.Write([]byte(data))
	w.Close()
	return b.String()
}

func TestGzipMtime(t *testing.T) {
	a := narOf(t, ent{path: "/man.gz", data: gz(t, "same page\n", build)})
	b := narOf(t, ent{path: "/man.gz", data: gz(t, "same page\n", build.Add(time.Minute))})
	r := diffBytes(t, a, b, opts())
	f := file(t, r, "/man.gz")
	if f.Format != "gzip" || !hasCause(f.Causes, CauseTimestamp) {
		t.Fatalf("gzip mtime not recognised:\n%s", r.Text())
	}
	mustContain(t, r.Text(), "gzip header mtime")
}

func tarOf(t testing.TB, names []string, data map[string]string, mtime time.Time) string {
	var b bytes.Buffer
	w := tar.NewWriter(&b)
	for _, n := range names {
		w.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(data[n])), ModTime: mtime, Format: tar.FormatPAX})
		w.Write([]byte(data[n]))
	}
	w.Close()
	return b.String()
}

func TestTgzMember(t *testing.T) {
	da := map[string]string{"a": "one\n", "b": "path=/build/src-1\n"}
	db := map[string]string{"a": "one\n", "b": "path=/build/src-2\n"}
	a := narOf(t, ent{path: "/src.tgz", data: gz(t, tarOf(t, []string{"a", "b"}, da, build), time.Unix(0, 0))})
	b := narOf(t, ent{path: "/src.tgz", data: gz(t, tarOf(t, []string{"a", "b"}, db, build), time.Unix(0, 0))})
	r := diffBytes(t, a, b, opts())
	s := r.Summary(1)
	if s.Files[0] != "/src.tgz!src!b" || !hasCause(r.Causes, CauseBuildPath) {
		t.Fatalf("summary %+v:\n%s", s, r.Text())
	}
}

func TestTarOrderAndMtime(t *testing.T) {
	d := map[string]string{"x": "1", "y": "2"}
	a := narOf(t, ent{path: "/t.tar", data: tarOf(t, []string{"x", "y"}, d, build)})
	b := narOf(t, ent{path: "/t.tar", data: tarOf(t, []string{"y", "x"}, d, build.Add(time.Hour))})
	r := diffBytes(t, a, b, opts())
	f := file(t, r, "/t.tar")
	if !hasCause(f.Causes, CauseFileOrder) || !hasCause(f.Causes, CauseTimestamp) {
		t.Fatalf("causes %+v:\n%s", f.Causes, r.Text())
	}
}

func zipOf(t testing.TB, files map[string]string, order []string, mtime time.Time) string {
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for _, n := range order {
		f, _ := w.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Deflate, Modified: mtime})
		f.Write([]byte(files[n]))
	}
	w.Close()
	return b.String()
}

func TestJarMember(t *testing.T) {
	order := []string{"META-INF/MANIFEST.MF", "A.class"}
	a := narOf(t, ent{path: "/lib.jar", data: zipOf(t, map[string]string{"META-INF/MANIFEST.MF": "Built-Date: 2026-12-06\n", "A.class": "\xca\xfe"}, order, build)})
	b := narOf(t, ent{path: "/lib.jar", data: zipOf(t, map[string]string{"META-INF/MANIFEST.MF": "Built-Date: 2026-12-07\n", "A.class": "\xca\xfe"}, order, build)})
	r := diffBytes(t, a, b, opts())
	f := file(t, r, "/lib.jar")
	if f.Format != "zip" || len(f.Members) != 1 || f.Members[0].Path != "META-INF/MANIFEST.MF" || !hasCause(f.Causes, CauseTimestamp) {
		t.Fatalf("jar:\n%s", r.Text())
	}
}

func TestJSONAndText(t *testing.T) {
	r := diffBytes(t, narOf(t, ent{path: "/f", data: "a\n"}), narOf(t, ent{path: "/f", data: "b\n"}), Options{LabelA: "sha256:aaa", LabelB: "sha256:bbb"})
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil || back.Differing != 1 || back.Files[0].Path != "/f" || back.LabelA != "sha256:aaa" {
		t.Fatalf("json round trip: %v %s", err, js)
	}
	mustContain(t, r.Text(), "--- sha256:aaa")
	mustContain(t, r.Text(), "/f: contents (text)")
}

func TestUnifiedBounded(t *testing.T) {
	var a, b strings.Builder
	for i := range 3000 {
		a.WriteString("line a " + string(rune('a'+i%26)) + "\n")
		b.WriteString("line b " + string(rune('a'+i%26)) + "\n")
	}
	o := opts()
	o.Limits.MaxDiffLines = 50
	r := diffBytes(t, narOf(t, ent{path: "/f", data: a.String()}), narOf(t, ent{path: "/f", data: b.String()}), o)
	f := file(t, r, "/f")
	if n := strings.Count(f.Unified, "\n"); n > 52 {
		t.Fatalf("unified diff has %d lines", n)
	}
	mustContain(t, strings.Join(f.Notes, ";"), "cut at 50 lines")
}

func TestUnifiedRemovedFirst(t *testing.T) {
	r := diffBytes(t, narOf(t, ent{path: "/f", data: "x\nold\ny\n"}), narOf(t, ent{path: "/f", data: "x\nnew\ny\n"}), opts())
	if u := file(t, r, "/f").Unified; u != "@@ -1,3 +1,3 @@\n x\n-old\n+new\n y\n" {
		t.Fatalf("unified:\n%s", u)
	}
}

// TestStreamedFilesLag: streams that cannot be read again, large files
// one after another, MaxBuffer 4 MiB (the prefix hasher may lag 7 MiB):
// equal files before (their hashing dropped unfinished) do not spoil the
// next file's hash, and a difference far past the lag, or at the very
// end, or in the length, still gives each side's whole sha256.
func TestStreamedFilesLag(t *testing.T) {
	o := opts()
	o.Limits.MaxBuffer = 4 << 20
	big := func(seed byte, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) ^ seed ^ byte(i>>13)
		}
		return b
	}
	eq1, eq2 := big(1, 12<<20), big(2, 9<<20+3)
	late, lateB := big(3, 12<<20), big(3, 12<<20)
	lateB[10<<20+17] ^= 1
	end, endB := big(4, 6<<20), big(4, 6<<20)
	endB[len(endB)-1] ^= 1
	short := big(5, 8<<20)
	na := narOf(t, ent{path: "/a", data: string(eq1)}, ent{path: "/b", data: string(eq2)}, ent{path: "/c", data: string(late)},
		ent{path: "/d", data: string(end)}, ent{path: "/e", data: string(short)})
	nb := narOf(t, ent{path: "/a", data: string(eq1)}, ent{path: "/b", data: string(eq2)}, ent{path: "/c", data: string(lateB)},
		ent{path: "/d", data: string(endB)}, ent{path: "/e", data: string(short[:5<<20+1])})
	r, err := Diff(context.Background(), struct{ io.Reader }{bytes.NewReader(na)}, struct{ io.Reader }{bytes.NewReader(nb)}, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Differing != 3 {
		t.Fatalf("%d differing, want /c, /d, /e:\n%s", r.Differing, r.Text())
	}
	for _, c := range []struct {
		path   string
		a, b   []byte
		offset int64
	}{{"/c", late, lateB, 10<<20 + 17}, {"/d", end, endB, 6<<20 - 1}, {"/e", short, short[:5<<20+1], 5<<20 + 1}} {
		f := file(t, r, c.path)
		if f.A.SHA256 != sha(c.a) || f.B.SHA256 != sha(c.b) || f.Offset != c.offset {
			t.Errorf("%s: sha256 %s %s, offset %d; want %s %s, %d", c.path, f.A.SHA256, f.B.SHA256, f.Offset, sha(c.a), sha(c.b), c.offset)
		}
	}
}

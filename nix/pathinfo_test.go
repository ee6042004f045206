package nix

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testnix"
)

// The three pathinfo-*.json fixtures describe the same store objects
// (examples/closure.nix built by Nix 2.8, plus one invalid path) in the
// three shapes of `nix path-info --json`: pathinfo-2.8.json is Nix 2.8's
// real output (the array of Nix ≤ 2.18 and Lix), pathinfo-2.26.json the
// object keyed by path of 2.19–2.32, pathinfo-2.34.json `--json-format 2`
// of 2.33+ (base names, structured content addresses), both transcribed
// from the 2.8 output. The real-*.json fixtures are what Debian's Nix
// 2.26.3 (trixie) and 2.34.8 (forky) printed for the same expression built
// in their own stores (TestParsePathInfoJSONReal).
var pathInfoFixtures = []string{"pathinfo-2.8.json", "pathinfo-2.26.json", "pathinfo-2.34.json"}

const (
	fxMissing = "/nix/store/00000000000000000000000000000000-missing"
	fxFixed   = "/nix/store/5kz9vgbp4547jbagwrylaag83nylrn43-closure-fixed"
	fxBusybox = "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox"
	fxGreet   = "/nix/store/ml4rc4rpk5lh8aym0zacyq3mic70vva8-greeting.txt"
	fxRight   = "/nix/store/cp57xn0xxpz5pah3fkvgys4lc1iz031s-closure-right"
)

func TestParsePathInfoJSONShapes(t *testing.T) {
	var first map[string]*PathInfo
	for _, fx := range pathInfoFixtures {
		t.Run(fx, func(t *testing.T) {
			b, err := os.ReadFile("testdata/" + fx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParsePathInfoJSON(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 10 {
				t.Fatalf("%d paths, want 10", len(got))
			}
			if pi, ok := got[fxMissing]; !ok || pi != nil {
				t.Fatalf("the invalid path: %v, %v; want present and nil", pi, ok)
			}
			cas := map[string]string{
				fxFixed:   "fixed:sha256:1d60hiaf2fd0wf07jd6s2wcdfxlbip2s74cc4lcbxb5zqykwsb0m",
				fxBusybox: "fixed:r:sha256:08f8d8hryay76i5ifs5ssn91cxyaffm7c4lkghd6z0rywb3xn8zl",
				fxGreet:   "text:sha256:0hi654kjffqdczsn7zinzyl9qz95rf61xl4wprppdmk27zznnqry",
				fxRight:   "",
			}
			for p, ca := range cas {
				if got[p] == nil || got[p].CA != ca {
					t.Errorf("%s: CA %+v, want %q", p, got[p], ca)
				}
			}
			r := got[fxRight]
			if !r.Ultimate || r.Deriver != "/nix/store/v11xkj88l7pdb2scly47z2qly28vjd2h-closure-right.drv" ||
				r.Registered.Unix() != 1796511290 || r.NarSize != 480 ||
				!slices.Equal(r.References, []string{fxFixed, "/nix/store/isirmm307walavnpy4plhszk671r8jlb-closure-multi-b", fxGreet}) ||
				hex.EncodeToString(r.NarHash[:]) != "db2bebeb725feecf1b7f5b483a622d5b3083f4c50c070ed6ceb8e050bf9598fa" {
				t.Errorf("right: %+v", r)
			}
			if b := got[fxBusybox]; b.Ultimate || b.Deriver != "" {
				t.Errorf("a source is neither ultimate nor derived: %+v", b)
			}
			if first == nil {
				first = got
			} else if !reflect.DeepEqual(first, got) {
				t.Errorf("%s parses differently from %s", fx, pathInfoFixtures[0])
			}
		})
	}
}

// TestParsePathInfoJSONReal reads real output of Nix 2.26.3 and 2.34.8
// for examples/closure.nix (built with their own busybox): 2.34.8's
// --json-format 2 (base names, structured CA) parses to exactly what its
// format 1 (full paths, Nix's own CA strings) does, which checks the
// conversion of structured content addresses against Nix itself.
func TestParsePathInfoJSONReal(t *testing.T) {
	parse := func(fx string) map[string]*PathInfo {
		t.Helper()
		b, err := os.ReadFile("testdata/" + fx)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParsePathInfoJSON(b)
		if err != nil {
			t.Fatalf("%s: %v", fx, err)
		}
		return m
	}
	for _, fx := range []string{"real-2.26.3.json", "real-2.34.8-format1.json", "real-2.34.8-format2.json"} {
		m := parse(fx)
		if len(m) != 10 || m[fxMissing] != nil {
			t.Fatalf("%s: %d paths, invalid %v", fx, len(m), m[fxMissing])
		}
		var kinds []string
		for p, pi := range m {
			if pi == nil {
				continue
			}
			switch {
			case pi.Ultimate && pi.Deriver != "" && strings.HasPrefix(pi.Deriver, "/nix/store/"):
				kinds = append(kinds, "built")
			case strings.HasSuffix(p, "-busybox") && strings.HasPrefix(pi.CA, "fixed:r:sha256:"),
				strings.HasSuffix(p, "-greeting.txt") && strings.HasPrefix(pi.CA, "text:sha256:"):
				kinds = append(kinds, "source")
			default:
				t.Errorf("%s: %s: %+v", fx, p, pi)
			}
			for _, r := range pi.References {
				if _, ok := m[r]; !ok || !strings.HasPrefix(r, "/nix/store/") {
					t.Errorf("%s: %s refers to %s, outside the closure", fx, p, r)
				}
			}
		}
		slices.Sort(kinds)
		if strings.Join(kinds, ",") != "built,built,built,built,built,built,built,source,source" {
			t.Errorf("%s: %v", fx, kinds)
		}
		if m[fxFixed] == nil || m[fxFixed].CA != "fixed:sha256:1d60hiaf2fd0wf07jd6s2wcdfxlbip2s74cc4lcbxb5zqykwsb0m" {
			t.Errorf("%s: the fixed output: %+v", fx, m[fxFixed])
		}
	}
	if v1, v2 := parse("real-2.34.8-format1.json"), parse("real-2.34.8-format2.json"); !reflect.DeepEqual(v1, v2) {
		for p := range v1 {
			if !reflect.DeepEqual(v1[p], v2[p]) {
				t.Errorf("%s:\nformat 1 %+v\nformat 2 %+v", p, v1[p], v2[p])
			}
		}
	}
}

func TestParsePathInfoJSONForms(t *testing.T) {
	const sri = "sha256-2yvr63Jf7s8bf1tIOmItWzCD9MUMBw7WzrjgUL+VmPo="
	const nix32 = "sha256:1ylqjnzm1q5qrvb0w1qcqps86c2v5mi3lj2vgwdwzvjzfbmynayv"
	tests := []struct {
		name, in, wantErr string
		check             func(t *testing.T, m map[string]*PathInfo)
	}{
		{name: "array with nix32 hash (Lix, older Nix)", in: `[{"path":"/nix/store/a-x","narHash":"` + nix32 + `","narSize":1,"references":[],"ultimate":true,"registrationTime":5,"signatures":["k:s"]}]`,
			check: func(t *testing.T, m map[string]*PathInfo) {
				if pi := m["/nix/store/a-x"]; pi == nil || hex.EncodeToString(pi.NarHash[:]) != "db2bebeb725feecf1b7f5b483a622d5b3083f4c50c070ed6ceb8e050bf9598fa" || !pi.Ultimate || pi.Registered.Unix() != 5 || !slices.Equal(pi.Signatures, []string{"k:s"}) {
					t.Fatalf("%+v", pi)
				}
			}},
		{name: "versioned, signatures as objects (format 3)", in: `{"version":3,"storeDir":"/nix/store","info":{"a-x":{"narHash":"` + sri + `","narSize":1,"references":["a-x"],"ca":{"method":"git","hash":"` + sri + `"},"signatures":[{"keyName":"k","sig":"s"}]}}}`,
			check: func(t *testing.T, m map[string]*PathInfo) {
				pi := m["/nix/store/a-x"]
				if pi == nil || !strings.HasPrefix(pi.CA, "fixed:git:sha256:") || pi.References[0] != "/nix/store/a-x" || pi.Signatures[0] != "k:s" {
					t.Fatalf("%+v", pi)
				}
			}},
		{name: "empty object", in: `{}`, check: func(t *testing.T, m map[string]*PathInfo) {
			if len(m) != 0 {
				t.Fatal(m)
			}
		}},
		{name: "empty", in: ` `, wantErr: "empty"},
		{name: "not JSON", in: `error: oops`, wantErr: "starts with"},
		{name: "array entry without path", in: `[{"narHash":"` + sri + `"}]`, wantErr: "absolute path"},
		{name: "object keyed by a name", in: `{"a-x":{"narHash":"` + sri + `"}}`, wantErr: "not a store path"},
		{name: "versioned keyed by a path", in: `{"version":2,"storeDir":"/nix/store","info":{"/nix/store/a-x":{"narHash":"` + sri + `"}}}`, wantErr: "not a base name"},
		{name: "versioned without storeDir", in: `{"version":2,"info":{}}`, wantErr: "storeDir"},
		{name: "bad hash", in: `[{"path":"/nix/store/a-x","narHash":"md5-AAAA"}]`, wantErr: "NAR hash"},
		{name: "unknown ca method", in: `{"version":2,"storeDir":"/nix/store","info":{"a-x":{"narHash":"` + sri + `","ca":{"method":"magic","hash":"` + sri + `"}}}}`, wantErr: "unknown method"},
		{name: "bad signature", in: `[{"path":"/nix/store/a-x","narHash":"` + sri + `","signatures":[7]}]`, wantErr: "signature"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParsePathInfoJSON([]byte(tc.in))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrPathInfoFormat) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrPathInfoFormat with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, m)
		})
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in                        string
		want                      Version
		jsonFormat, configShow, s bool
	}{
		{in: "nix (Nix) 2.8.0\n", want: Version{2, 8, 0, false}},
		{in: "nix (Nix) 2.26.3", want: Version{2, 26, 3, false}, configShow: true},
		{in: "nix (Nix) 2.34.8\nSystem type: x86_64-linux\n", want: Version{2, 34, 8, false}, jsonFormat: true, configShow: true},
		{in: "nix (Nix) 2.35.0pre20261201_abcdef0", want: Version{2, 35, 0, false}, jsonFormat: true, configShow: true},
		{in: "nix (Lix, like Nix) 2.91.1", want: Version{2, 91, 1, true}, configShow: true},
		{in: "nix (Nix) 3.0", want: Version{3, 0, 0, false}, jsonFormat: true, configShow: true},
	}
	for _, tc := range tests {
		v, err := ParseVersion(tc.in)
		if err != nil || v != tc.want || v.hasJSONFormat() != tc.jsonFormat || v.hasConfigShow() != tc.configShow {
			t.Errorf("ParseVersion(%q) = %+v, %v (json-format %v, config show %v)", tc.in, v, err, v.hasJSONFormat(), v.hasConfigShow())
		}
	}
	if v, _ := ParseVersion("nix (Lix, like Nix) 2.91.1"); v.String() != "2.91.1 (Lix)" || v.AtLeast(2, 19) || !v.AtLeast(2, 18) {
		t.Errorf("Lix: %s, AtLeast(2,19) %v", v, v.AtLeast(2, 19))
	}
	if _, err := ParseVersion("nix (Nix) unknown"); !errors.Is(err, ErrVersion) {
		t.Errorf("no version: %v", err)
	}
}

// TestPathInfosRealNix runs the parser against the host's real Nix (2.8
// on Debian 12): the closure sample in a chroot store, whose sources
// carry their content addresses, whose outputs are ultimate, and whose
// NAR hashes and references agree with the database dump.
func TestPathInfosRealNix(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := OfflineOptions()
	opts["sandbox"] = "false"
	n := &Nix{Root: t.TempDir(), Options: opts}
	v, err := n.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nix %s", v)
	start := time.Now()
	drvs, err := n.Instantiate(ctx, "../examples/closure.nix", "top", map[string]string{"busybox": bb}, map[string]string{"message": t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := n.Realise(ctx, drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	closure, err := n.Requisites(ctx, outs[0])
	if err != nil || len(closure) != 9 {
		t.Fatalf("closure %v, %v", closure, err)
	}
	infos, err := n.PathInfos(ctx, closure...)
	if err != nil {
		t.Fatal(err)
	}
	db, err := n.PathInfo(ctx, closure...)
	if err != nil {
		t.Fatal(err)
	}
	var sources, ultimate int
	for i, pi := range infos {
		if pi.Path != closure[i] || pi.NarHash != db[i].NarHash || pi.NarSize != db[i].NarSize ||
			!slices.Equal(pi.References, db[i].References) || pi.Deriver != db[i].Deriver {
			t.Errorf("path-info and dump-db differ:\n%+v\n%+v", pi, db[i])
		}
		switch {
		case pi.Ultimate:
			ultimate++
		case strings.HasPrefix(pi.CA, "fixed:r:sha256:") && strings.HasSuffix(pi.Path, "-busybox"),
			strings.HasPrefix(pi.CA, "text:sha256:") && strings.HasSuffix(pi.Path, "-greeting.txt"):
			sources++
		default:
			t.Errorf("neither built here nor a source: %+v", pi)
		}
	}
	if sources != 2 || ultimate != 7 {
		t.Fatalf("%d sources, %d built; want 2 and 7", sources, ultimate)
	}
	built, err := n.BuiltSince(ctx, start)
	if err != nil || len(built) != 7 {
		t.Fatalf("BuiltSince: %d paths, %v; want the 7 outputs", len(built), err)
	}
	if later, err := n.BuiltSince(ctx, time.Now().Add(time.Hour)); err != nil || len(later) != 0 {
		t.Fatalf("BuiltSince the future: %v, %v", later, err)
	}
	if _, err := n.PathInfos(ctx, "/nix/store/00000000000000000000000000000000-missing"); !errors.Is(err, ErrInvalidPath) {
		t.Fatalf("an invalid path: %v", err)
	}
	cfg, err := n.Config(ctx)
	if err != nil || cfg["sandbox"] != "false" {
		t.Fatalf("Config: sandbox %q, %v", cfg["sandbox"], err)
	}
}

// TestHostSystems: the host's real Nix names its system first, then its
// extra-platforms, each once.
func TestHostSystems(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := OfflineOptions()
	n := &Nix{Options: opts}
	cfg, err := n.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := cfg["system"]
	opts["extra-platforms"] = "riscv64-linux " + host + " riscv64-linux"
	got, err := n.HostSystems(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{host, "riscv64-linux"}; !slices.Equal(got, want) {
		t.Fatalf("HostSystems = %q, want %q", got, want)
	}
}

package cacheclient_test

import (
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/cacheclient"
)

// nixStorePathRule is Nix's rule, written out plainly: /nix/store/, 32
// characters of Nix base-32, a dash, a name of 1 to 211 characters from
// [A-Za-z0-9+-._?=] not starting with a dot.
func nixStorePathRule(p string) bool {
	rest, ok := strings.CutPrefix(p, "/nix/store/")
	if !ok || len(rest) < 34 || rest[32] != '-' {
		return false
	}
	for _, c := range rest[:32] {
		if !strings.ContainsRune("0123456789abcdfghijklmnpqrsvwxyz", c) {
			return false
		}
	}
	name := rest[33:]
	if len(name) > 211 || name[0] == '.' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("+-._?=", c)) {
			return false
		}
	}
	return true
}

func FuzzCheckStorePath(f *testing.F) {
	for _, s := range []string{
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-.hidden",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps_busybox",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcpe-x",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-a\nb",
		"/tmp/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-a/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := cacheclient.CheckStorePath(p)
		if want := nixStorePathRule(p); (err == nil) != want {
			t.Fatalf("CheckStorePath(%q) = %v, Nix's rule says valid=%v", p, err, want)
		}
	})
}

func FuzzParseNarinfo(f *testing.F) {
	f.Add([]byte("StorePath: /nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox\nURL: nar/1lwydijr6099gzlp5ys3i65027bngl5bqv8cq01gj85jdprvga83.nar.zst\nCompression: zstd\nNarHash: sha256:08f8d8hryay76i5ifs5ssn91cxyaffm7c4lkghd6z0rywb3xn8zl\nNarSize: 1234\nReferences: 8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox\nCA: fixed:r:sha256:08f8d8hryay76i5ifs5ssn91cxyaffm7c4lkghd6z0rywb3xn8zl\nSig: c-1:" + strings.Repeat("A", 86) + "==\n"))
	f.Add([]byte("StorePath: x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ni, err := cacheclient.ParseNarinfo(b)
		if err != nil {
			return
		}
		// What is accepted is well formed and survives a round trip.
		if cacheclient.CheckStorePath(ni.StorePath) != nil || ni.NarHash == nil || ni.URL == "" {
			t.Fatalf("accepted %+v", ni)
		}
		again, err := cacheclient.ParseNarinfo([]byte(ni.String()))
		if err != nil || again.Fingerprint() != ni.Fingerprint() {
			t.Fatalf("round trip: %v\n%s", err, ni.String())
		}
	})
}

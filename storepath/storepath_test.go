package storepath

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	good := []string{
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
		"/nix/store/kba2004i6av0ais4wfbadjbs2mv1xwh6-closure-top",
		"/nix/store/fgkf9p9hs2vwhczji26s951hdzw4gwbs-closure-multi-b-dev",
		"/nix/store/ml4rc4rpk5lh8aym0zacyq3mic70vva8-greeting.txt",
		"/nix/store/00000000000000000000000000000000-a+b_c?d=e.f",
		"/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-" + strings.Repeat("x", MaxNameLen),
		"/nix/store/yrzzr5hdyb962kz2r6qr0nlr6mipj6ay-closure-dep-a.drv",
	}
	for _, p := range good {
		if err := Check(p); err != nil {
			t.Errorf("Check(%q) = %v, want nil", p, err)
		}
	}
	bad := map[string]string{
		"newline in hash":   "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crc\n\n-x",
		"e in hash":         "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcpe-busybox",
		"upper-case hash":   "/nix/store/8HZBZ17VCMW97W1WPQPADXHFKJ7CRCPS-busybox",
		"short hash":        "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcp-busybox",
		"leading dot":       "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-.hidden",
		"dot dot":           "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-..",
		"empty name":        "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-",
		"no dash":           "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcpsxbusybox",
		"slash in name":     "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-a/b",
		"space in name":     "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-a b",
		"newline in name":   "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-a\nStorePath: x",
		"long name":         "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-" + strings.Repeat("x", MaxNameLen+1),
		"other store":       "/gnu/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
		"relative":          "8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
		"subpath":           "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox/bin/sh",
		"traversal":         "/nix/store/../etc/passwd",
		"non-ascii in name": "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-büsybox",
	}
	for what, p := range bad {
		err := Check(p)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Check(%q) = %v, want ErrInvalid", what, p, err)
		}
	}
}

func TestParts(t *testing.T) {
	p := "/nix/store/fgkf9p9hs2vwhczji26s951hdzw4gwbs-closure-multi-b-dev"
	if h := HashPart(p); h != "fgkf9p9hs2vwhczji26s951hdzw4gwbs" {
		t.Errorf("HashPart = %q", h)
	}
	if n := Name(p); n != "closure-multi-b-dev" {
		t.Errorf("Name = %q", n)
	}
	if HashPart("short") != "" || Name("/nix/store/x") != "" {
		t.Error("parts of a short path must be empty")
	}
}

// FuzzCheck: Check never panics, and whatever it accepts is safe to use as
// a file name, a NATS key token and a narinfo line.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crc\n\n-x",
		"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-.x",
		"/nix/store/",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if Check(p) != nil {
			return
		}
		base := strings.TrimPrefix(p, Dir+"/")
		if strings.ContainsAny(base, "/\n\r\t *>") || strings.HasPrefix(Name(p), ".") || len(HashPart(p)) != HashLen {
			t.Fatalf("Check accepted %q", p)
		}
		if CheckBase(base) != nil || CheckHashPart(HashPart(p)) != nil || CheckName(Name(p)) != nil {
			t.Fatalf("parts of accepted %q are refused", p)
		}
	})
}

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

// FuzzCheckNixRule: Check accepts exactly what Nix's rule accepts.
func FuzzCheckNixRule(f *testing.F) {
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
		err := Check(p)
		if want := nixStorePathRule(p); (err == nil) != want {
			t.Fatalf("Check(%q) = %v, Nix's rule says valid=%v", p, err, want)
		}
	})
}

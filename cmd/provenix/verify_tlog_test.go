package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/up"
)

// TestVerifyRequireTlog runs `provenix verify --require-tlog` and a policy
// with require_tlog against bundles logged in a real rekor-tiles log.
func TestVerifyRequireTlog(t *testing.T) {
	const builder = "https://builders.example/alice"
	log := testrekor.Start(t)
	dir := t.TempDir()
	nar := []byte("not really a NAR, but verify only hashes it")
	narPath := filepath.Join(dir, "out.nar")
	os.WriteFile(narPath, nar, 0o644)
	const out = "/nix/store/9ri7p1kdl1d1vavgmc3mq0rkdkmvcl0f-hello"

	s, key := testkey.Signer(t)
	pub, _ := attest.MarshalPublicKey(key.Public())
	pubPath := filepath.Join(dir, "builder.pub")
	os.WriteFile(pubPath, pub, 0o644)
	st, err := attest.NewStatement(&attest.Build{
		DrvPath:    "/nix/store/0c7a0m2yx2cys3q1hbm3m7r9g1qv0x3k-hello.drv",
		System:     "x86_64-linux",
		Outputs:    []attest.Output{{Name: "out", Path: out, NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar))}},
		BuilderID:  builder,
		StartedOn:  time.Unix(1700000000, 0),
		FinishedOn: time.Unix(1700000001, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	logged, err := attest.SignWithLog(t.Context(), st, s, attest.LogOptions{RekorURL: log.URL})
	if err != nil {
		t.Fatal(err)
	}
	unlogged, err := attest.Sign(t.Context(), st, s)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var m map[string]any
	json.Unmarshal(logged, &m)
	delete(m["verificationMaterial"].(map[string]any), "tlogEntries")
	stripped, _ := json.Marshal(m)
	loggedPath, unloggedPath, strippedPath := write("logged.json", logged), write("unlogged.json", unlogged), write("stripped.json", stripped)
	polPath := write("policy.yaml", []byte("tenants: [default]\nsystems: [x86_64-linux]\ntrusted_root: "+log.TrustedRootPath+
		"\nrequire_tlog: true\nbuilders:\n  - id: "+builder+"\n    key: "+pubPath+"\n"))

	verify := func(bundle string, trust ...string) (int, string) {
		args := append([]string{"verify", "--bundle", bundle, "--store-path", out}, trust...)
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), append(args, narPath), strings.NewReader(""), &stdout, &stderr)
		return code, stdout.String() + stderr.String()
	}
	withKey := []string{"--key", pubPath, "--builder-id", builder}
	strict := append(withKey[:len(withKey):len(withKey)], "--require-tlog", "--trusted-root", log.TrustedRootPath)
	tests := []struct {
		name   string
		bundle string
		trust  []string
		want   int
	}{
		{"logged, --require-tlog", loggedPath, strict, exitOK},
		{"logged, key only", loggedPath, withKey, exitOK},
		{"not logged, key only", unloggedPath, withKey, exitOK},
		{"not logged, --require-tlog", unloggedPath, strict, exitFailed},
		{"entry removed, --require-tlog", strippedPath, strict, exitFailed},
		{"logged, policy require_tlog", loggedPath, []string{"--policy", polPath}, exitOK},
		{"entry removed, policy require_tlog", strippedPath, []string{"--policy", polPath}, exitFailed},
		{"--require-tlog without --trusted-root", loggedPath, append(withKey[:len(withKey):len(withKey)], "--require-tlog"), exitUsageErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, outp := verify(tc.bundle, tc.trust...)
			if code != tc.want {
				t.Fatalf("exit %d, want %d\n%s", code, tc.want, outp)
			}
			if tc.want == exitFailed && !strings.Contains(outp, "transparency log") {
				t.Fatalf("rejection does not name the transparency log:\n%s", outp)
			}
		})
	}
}

// TestBuildWithTransparencyLog: `provenix build --rekor-url` logs the
// bundle in a real rekor-tiles log; the pusher publishes it and
// `verify --cache --require-tlog` accepts it, while a cache entry signed
// without the log is refused under the same requirement.
func TestBuildWithTransparencyLog(t *testing.T) {
	busybox := requireNix(t)
	log := testrekor.Start(t)
	ctx := testctx.New(t, 3*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir})
	p := stack.Paths()
	logged := buildSample(t, ctx, busybox, "--data-dir", dir, "--rekor-url", log.URL)
	plain := buildSample(t, ctx, busybox, "--data-dir", dir)
	verify := func(path string) (string, int) {
		waitNarinfo(t, stack.CacheURL(), path)
		stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
			"--key", p.BuilderPub(), "--require-tlog", "--trusted-root", log.TrustedRootPath, path)
		return stdout + stderr, code
	}
	if out, code := verify(logged.Outputs[0].Path); code != 0 {
		t.Fatalf("logged build: exit %d\n%s", code, out)
	}
	if out, code := verify(plain.Outputs[0].Path); code != exitFailed {
		t.Fatalf("unlogged build under --require-tlog: exit %d, want %d\n%s", code, exitFailed, out)
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/tests3"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/tenant"
)

// daemon runs a long-lived provenix command in-process until the test
// ends, and returns its output buffers once ready reports true on them.
func daemon(t *testing.T, ctx context.Context, ready func(stdout, stderr string) bool, args ...string) (stdout, stderr *testlog.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	var out, errb testlog.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, strings.NewReader(""), &out, &errb) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("provenix %s did not stop", args[0])
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !ready(out.String(), errb.String()) {
		select {
		case code := <-done:
			t.Fatalf("provenix %s exited with %d before it was ready\n%s\n%s", strings.Join(args, " "), code, out.String(), errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("provenix %s not ready after 30s\n%s\n%s", strings.Join(args, " "), out.String(), errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &out, &errb
}

// serveTenantCache runs `provenix cache serve --readers` on dir and
// returns its URL.
func serveTenantCache(t *testing.T, ctx context.Context, dir, readers string) string {
	t.Helper()
	out, _ := daemon(t, ctx, func(stdout, _ string) bool { return strings.Contains(stdout, " at http://") },
		"cache", "serve", "--dir", dir, "--readers", readers, "--listen", "127.0.0.1:0")
	_, url, _ := strings.Cut(strings.TrimSpace(out.String()), " at ")
	return url
}

// netrcLogin reads the login and password of a netrc file `tenant add`
// wrote.
func netrcLogin(t *testing.T, path string) (string, string) {
	t.Helper()
	f := strings.Fields(string(testfs.Read(t, path)))
	if len(f) != 6 || f[2] != "login" || f[4] != "password" {
		t.Fatalf("netrc %s: %q", path, f)
	}
	return f[3], f[5]
}

func get(t *testing.T, url, user, password string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestTenantsEndToEnd runs two tenants the way docs/tenants.md sets them
// up: `provenix tenant add`, one nats-server with both accounts, a pusher
// and a cache server per tenant. Tenant a's runner builds and publishes,
// a's pusher publishes into a's cache, stock nix substitutes from it with
// a's netrc; b's reader and anonymous clients cannot read a's cache, a's
// reader cannot read b's, and a's runner cannot publish as b.
func TestTenantsEndToEnd(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 3*time.Minute)
	dir := t.TempDir()
	td := func(name, file string) string { return filepath.Join(dir, name, file) }
	var includes strings.Builder
	for _, n := range []string{"a", "b"} {
		if o, e, code := cli(t, ctx, "tenant", "add", n, "--dir", filepath.Join(dir, n), "--cache-host", "127.0.0.1", "--max-file", "256MiB"); code != 0 {
			t.Fatalf("tenant add %s: exit %d\n%s\n%s", n, code, o, e)
		}
		fmt.Fprintf(&includes, "  include %q\n", filepath.Join(n, tenant.FileAccount))
	}
	srv := testnats.Start(t, dir, "accounts {\n"+includes.String()+"}\n", false)

	caches := map[string]string{}
	for _, n := range []string{"a", "b"} {
		cacheDir := filepath.Join(dir, "cache-"+n)
		daemon(t, ctx, func(_, stderr string) bool { return strings.Contains(stderr, "cache pusher running") },
			"cache-push", "--nats-url", srv.URL, "--nats-nkey", td(n, "pusher.nk"), "--tenant", n,
			"--policy", td(n, tenant.FilePolicy), "--cache-key", td(n, tenant.FileCacheKey), "--vsa-key", td(n, tenant.FileVSAKey),
			"--dir", cacheDir, "--group", "cache")
		caches[n] = serveTenantCache(t, ctx, cacheDir, td(n, tenant.FileCacheReaders))
	}
	userA, passA := netrcLogin(t, td("a", tenant.FileNetrc))
	userB, passB := netrcLogin(t, td("b", tenant.FileNetrc))

	runnerA := []string{"--nats-url", srv.URL, "--nats-nkey", td("a", "runner.nk"), "--key", td("a", tenant.FileBuilderKey), "--builder-id", "a-runner"}
	pub := buildSample(t, ctx, busybox, append(runnerA, "--tenant", "a")...)
	out := pub.Outputs[0]
	narinfoA := caches["a"] + "/" + cachelayout.NarinfoKey(out.Path)
	deadline := time.Now().Add(30 * time.Second)
	for get(t, narinfoA, userA, passA) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("a's pusher did not publish %s into a's cache\nnats-server log:\n%s", out.Path, srv.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}

	t.Run("only a's readers read a's cache", func(t *testing.T) {
		for _, c := range []struct {
			who, user, pass string
			url             string
			want            int
		}{
			{"anonymous", "", "", narinfoA, http.StatusUnauthorized},
			{"b's reader", userB, passB, narinfoA, http.StatusUnauthorized},
			{"a's user with b's password", userA, passB, narinfoA, http.StatusUnauthorized},
			{"a's reader on b's cache", userA, passA, caches["b"] + "/nix-cache-info", http.StatusUnauthorized},
			{"b's reader on b's cache", userB, passB, caches["b"] + "/" + cachelayout.NarinfoKey(out.Path), http.StatusNotFound},
		} {
			if got := get(t, c.url, c.user, c.pass); got != c.want {
				t.Errorf("%s: GET %s: %d, want %d", c.who, c.url, got, c.want)
			}
		}
	})
	t.Run("stock nix substitutes with a's netrc only", func(t *testing.T) {
		pubKey := readPub(t, td("a", tenant.FileCacheKey)+".pub")
		for _, c := range []struct {
			netrc string
			ok    bool
		}{{td("b", tenant.FileNetrc), false}, {td("a", tenant.FileNetrc), true}} {
			opts := nix.SubstituteOptions(caches["a"], pubKey)
			opts["netrc-file"] = c.netrc
			client := &nix.Nix{Root: t.TempDir(), Options: opts}
			_, err := client.Realise(ctx, out.Path)
			if (err == nil) != c.ok {
				t.Fatalf("nix with %s: err = %v, want success %v", c.netrc, err, c.ok)
			}
		}
	})
	t.Run("up runs as b's pusher with b's seed", func(t *testing.T) {
		data := t.TempDir()
		daemon(t, ctx, func(stdout, _ string) bool { return strings.Contains(stdout, "Ctrl-C stops.") },
			"up", "--data-dir", data, "--nats-url", srv.URL, "--nats-nkey", td("b", "pusher.nk"), "--tenant", "b",
			"--listen", "127.0.0.1:0")
		stdout, stderr, code := cli(t, ctx, "up", "--status", "--json", "--data-dir", data)
		if code != 0 || !strings.Contains(stdout, `"tenant": "b"`) || strings.Contains(stdout, `"errors"`) {
			t.Fatalf("up --status: exit %d\n%s\n%s", code, stdout, stderr)
		}
		// With the runner's seed it cannot even set up: a clear error, at once.
		start := time.Now()
		_, stderr, code = cli(t, ctx, "up", "--data-dir", t.TempDir(), "--nats-url", srv.URL, "--nats-nkey", td("b", "runner.nk"),
			"--tenant", "b", "--listen", "127.0.0.1:0")
		if code == 0 || !strings.Contains(stderr, "permission denied") {
			t.Fatalf("up with the runner's seed: exit %d\n%s", code, stderr)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("the refusal took %s", d)
		}
	})
	t.Run("a's runner cannot publish as b", func(t *testing.T) {
		start := time.Now()
		args := append([]string{"build", "--json", filepath.Join("..", "..", "examples", "hello.nix"), "-A", "hello", "--arg", "busybox=" + busybox,
			"--argstr", "message=" + uniqueMessage(t), "--nix-option", "substituters=", "--tenant", "b"}, runnerA...)
		_, stderr, code := cli(t, ctx, args...)
		if code != exitFailed || !strings.Contains(stderr, "permission denied") || !strings.Contains(stderr, "results.b.") {
			t.Fatalf("build --tenant b with a's runner: exit %d, want %d and a permission error naming results.b\n%s", code, exitFailed, stderr)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("the denied build took %s", d)
		}
	})
}

// TestTenantCachesInS3: tenants sharing one bucket, each cache under its
// own prefix, each served by its own `cache serve --readers`: a tenant's
// readers get its objects, and neither the other tenant's credentials nor
// the other tenant's server reach them.
func TestTenantCachesInS3(t *testing.T) {
	srv := tests3.Start(t)
	ctx := testctx.New(t, time.Minute)
	dir := t.TempDir()
	secret := filepath.Join(dir, "s3-secret")
	if err := os.WriteFile(secret, []byte(tests3.SecretKey), 0o600); err != nil {
		t.Fatal(err)
	}
	key := cachelayout.NarinfoKey("/nix/store/" + strings.Repeat("a", 32) + "-x")
	urls, logins := map[string]string{}, map[string][2]string{}
	for _, n := range []string{"a", "b"} {
		if o, e, code := cli(t, ctx, "tenant", "add", n, "--dir", filepath.Join(dir, n)); code != 0 {
			t.Fatalf("tenant add %s: exit %d\n%s\n%s", n, code, o, e)
		}
		prefix := "tenants/" + n
		st, err := s3.New(*s3Options(srv, prefix))
		if err != nil {
			t.Fatal(err)
		}
		p, err := st.Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(p, "StorePath: of tenant %s\n", n)
		if err := p.Commit(ctx, key); err != nil {
			t.Fatal(err)
		}
		out, _ := daemon(t, ctx, func(stdout, _ string) bool { return strings.Contains(stdout, " at http://") },
			"cache", "serve", "--listen", "127.0.0.1:0", "--readers", filepath.Join(dir, n, tenant.FileCacheReaders),
			"--s3-endpoint", srv.Endpoint, "--s3-bucket", srv.Bucket, "--s3-prefix", prefix, "--s3-region", tests3.Region,
			"--s3-access-key", tests3.AccessKey, "--s3-secret-file", secret, "--s3-insecure-http")
		_, urls[n], _ = strings.Cut(strings.TrimSpace(out.String()), " at ")
		u, pw := netrcLogin(t, filepath.Join(dir, n, tenant.FileNetrc))
		logins[n] = [2]string{u, pw}
	}
	body := func(url string, login [2]string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.SetBasicAuth(login[0], login[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, n := range []string{"a", "b"} {
		code, b := body(urls[n]+"/"+key, logins[n])
		if code != http.StatusOK || !strings.Contains(b, "of tenant "+n) {
			t.Errorf("%s's reader on %s's cache: %d %q, want %s's object", n, n, code, b, n)
		}
	}
	if code, _ := body(urls["a"]+"/"+key, logins["b"]); code != http.StatusUnauthorized {
		t.Errorf("b's reader on a's cache: %d, want 401", code)
	}
	if code, _ := body(urls["b"]+"/"+key, logins["a"]); code != http.StatusUnauthorized {
		t.Errorf("a's reader on b's cache: %d, want 401", code)
	}
}

// TestTenantUpgradeCommand: `tenant upgrade --check` exits 1 on an
// account.conf of an older version and writes nothing; `tenant upgrade`
// rewrites it and creates the missing submitter seed; then --check exits 0.
func TestTenantUpgradeCommand(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	dir := filepath.Join(t.TempDir(), "acme")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("..", "..", "tenant", "testdata", "pre-submitter"))); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, tenant.SeedFile("submitter"))
	stdout, stderr, code := cli(t, ctx, "tenant", "upgrade", "--check", "acme", "--dir", dir)
	if _, err := os.Stat(seed); code != exitFailed || !strings.Contains(stdout, "submitter: new user") || !strings.Contains(stderr, "out of date") || err == nil {
		t.Fatalf("--check on an old tenant: exit %d (want 1), submitter.nk: %v\n%s\n%s", code, err, stdout, stderr)
	}
	if stdout, stderr, code := cli(t, ctx, "tenant", "upgrade", "acme", "--dir", dir); code != 0 || !strings.Contains(stdout, "created "+seed) {
		t.Fatalf("upgrade: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if stdout, stderr, code := cli(t, ctx, "tenant", "upgrade", "--check", "acme", "--dir", dir); code != 0 || !strings.Contains(stdout, "is current") {
		t.Fatalf("--check after the upgrade: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

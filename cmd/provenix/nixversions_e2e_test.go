package main

// The end-to-end path under every Nix version users run: Debian 12's Nix
// 2.8 on the host, and 2.26 (trixie) and 2.34 (forky) in chroots that
// scripts/nix-chroot.sh builds (internal/testnix). The embedded stack
// (`up`) runs on the host; the static provenix binary and that version's
// stock nix run inside the chroot and reach it over the shared loopback.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/up"
)

// envFiles copies what a builder inside env needs from the data directory
// (its signing key and the NATS token) and the example expressions into a
// fresh directory there, and returns that directory (a path inside env).
func envFiles(t *testing.T, env *testnix.Env, p up.Paths) string {
	t.Helper()
	dir := env.TempDir(t)
	env.Install(t, p.BuilderKey(), dir+"/builder.key", 0o600)
	env.Install(t, p.NATSToken(), dir+"/nats.token", 0o600)
	for _, f := range []string{"hello.nix", "closure.nix"} {
		env.Install(t, filepath.Join("..", "..", "examples", f), dir+"/"+f, 0o644)
	}
	return dir
}

// envBuild runs the static `provenix build --json` inside env against the
// stack's NATS, in a fresh chroot store, and returns the published results
// and the store's root (inside env).
func envBuild(t *testing.T, ctx context.Context, env *testnix.Env, stack *up.Stack, files, expr, attr, message string) ([]jsonPublished, string) {
	t.Helper()
	store := env.TempDir(t)
	cmd := env.Command(ctx, env.Provenix(t), "build", "--json", files+"/"+expr, "-A", attr,
		"--arg", "busybox="+env.Busybox(t), "--argstr", "message="+message, "--store", store,
		"--key", files+"/builder.key", "--nats-url", stack.NATSURL(), "--nats-token-file", files+"/nats.token",
		"--nix-option", "substituters=")
	var stderr testlog.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: provenix build %s -A %s: %v\n%s\n%s", env, expr, attr, err, stdout, stderr.String())
	}
	var pubs []jsonPublished
	if err := json.Unmarshal(stdout, &pubs); err != nil || len(pubs) == 0 {
		t.Fatalf("%s: build --json output %q: %v", env, stdout, err)
	}
	return pubs, store
}

// envSubstitute has env's stock nix realise path from the cache into an
// empty chroot store, trusting only the cache's key, and returns the
// store's root inside env.
func envSubstitute(t *testing.T, ctx context.Context, env *testnix.Env, cacheURL, cachePubFile, path string) (string, error) {
	t.Helper()
	root := env.TempDir(t)
	args := []string{"--store", root, "-r", path}
	for k, v := range nix.SubstituteOptions(cacheURL, readPub(t, cachePubFile)) {
		args = append(args, "--option", k, v)
	}
	out, err := env.Command(ctx, "nix-store", args...).CombinedOutput()
	if err != nil {
		return root, fmt.Errorf("%s: nix-store -r %s from %s: %v\n%s", env, path, cacheURL, err, out)
	}
	return root, nil
}

// waitNarinfos waits until every path has a narinfo in the stack's cache
// and fails with the ones that never came, and what `provenix status` says
// of each (a pusher that holds an entry says what it waits for).
func waitNarinfos(t *testing.T, ctx context.Context, stack *up.Stack, paths []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	missing := paths
	for {
		missing = slices.DeleteFunc(slices.Clone(missing), func(p string) bool {
			return narinfoStatus(stack.CacheURL(), p) == 200
		})
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var why strings.Builder
			for _, m := range missing {
				stdout, stderr, code := cli(t, ctx, "status", "--data-dir", stack.Paths().Dir, "--nats-url", stack.NATSURL(),
					"--nats-token-file", stack.Paths().NATSToken(), m)
				fmt.Fprintf(&why, "  %s\n    status (exit %d): %s%s\n", m, code, strings.ReplaceAll(strings.TrimSpace(stdout), "\n", "\n    "), stderr)
			}
			t.Fatalf("after %v, %d of the %d paths have no narinfo in the cache:\n%s", within, len(missing), len(paths), why.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func narinfoStatus(cacheURL, path string) int {
	resp, err := http.Get(cacheURL + "/" + cachelayout.NarinfoKey(path))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// closurePaths is the runtime closure of path in env's store at root.
func closurePaths(t *testing.T, ctx context.Context, env *testnix.Env, root, path string) []string {
	t.Helper()
	out := env.Output(t, ctx, "nix-store", "--store", root, "-qR", path)
	return strings.Fields(out)
}

// runTop runs closure.nix's top from the store at root, with nothing but
// that store: `chroot ROOT …/bin/top` inside env.
func runTop(t *testing.T, ctx context.Context, env *testnix.Env, root, top, message string) {
	t.Helper()
	out := env.Output(t, ctx, "chroot", root, top+"/bin/top")
	for _, want := range []string{"top: " + message, "dep-a: " + message, "greetings from a closure", "provenix fixed output", "headers of /nix/store/"} {
		if !strings.Contains(out, want) {
			t.Fatalf("%s: top printed %q, want %q in it", env, out, want)
		}
	}
}

// TestNixVersionsHello proves the cross-version harness with the
// one-derivation sample: built by the static provenix inside each Nix
// version, substituted by that version's stock nix from the cache given
// only its URL and key, and verified.
func TestNixVersionsHello(t *testing.T) {
	for _, env := range testnix.Versions(t) {
		t.Run(env.String(), func(t *testing.T) {
			ctx := testctx.New(t, 5*time.Minute)
			dir := t.TempDir()
			stack := startStack(t, up.Config{DataDir: dir})
			p := stack.Paths()
			files := envFiles(t, env, p)
			msg := uniqueMessage(t)
			pubs, _ := envBuild(t, ctx, env, stack, files, "hello.nix", "hello", msg)
			out := pubs[0].Outputs[0]
			waitNarinfos(t, ctx, stack, []string{out.Path}, time.Minute)
			root, err := envSubstitute(t, ctx, env, stack.CacheURL(), p.CachePub(), out.Path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(env.HostPath(root + out.Path + "/share/message"))
			if err != nil || strings.TrimSpace(string(got)) != msg {
				t.Fatalf("%s: substituted hello says %q (%v), want %q", env, got, err, msg)
			}
			// --require-vsa: the pusher's verification summary of what
			// this Nix built must be there and verify, not only be
			// checked when present.
			if stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(), "--require-vsa", out.Path); code != 0 {
				t.Fatalf("verify --cache --require-vsa: exit %d\n%s\n%s", code, stdout, stderr)
			}
		})
	}
}

// TestNixVersionsClosure is issue 10's acceptance on each Nix version:
// examples/closure.nix -A top (6 derivations: multi-output with a
// reference between outputs, a source path, a toFile text, a fixed-output
// derivation, a diamond) built with `provenix build` inside that version;
// every path of top's closure reaches the cache; that version's stock nix,
// given only the cache and its key, substitutes top into an empty store and
// runs it; `verify --cache` and `verify --closure` exit 0.
func TestNixVersionsClosure(t *testing.T) {
	for _, env := range testnix.Versions(t) {
		t.Run(env.String(), func(t *testing.T) {
			ctx := testctx.New(t, 5*time.Minute)
			dir := t.TempDir()
			stack := startStack(t, up.Config{DataDir: dir})
			p := stack.Paths()
			files := envFiles(t, env, p)
			msg := uniqueMessage(t)
			pubs, store := envBuild(t, ctx, env, stack, files, "closure.nix", "top", msg)
			var top string
			for _, pub := range pubs {
				for _, o := range pub.Outputs {
					if strings.HasSuffix(o.Path, "-closure-top") {
						top = o.Path
					}
				}
			}
			if top == "" {
				t.Fatalf("%s: build published no closure-top: %+v", env, pubs)
			}
			closure := closurePaths(t, ctx, env, store, top)
			if len(closure) != 9 {
				t.Fatalf("%s: closure of top has %d paths, want 9 (top, left, right, multi-b, multi-b-dev, dep-a, fixed, greeting.txt, busybox):\n%s", env, len(closure), strings.Join(closure, "\n"))
			}
			waitNarinfos(t, ctx, stack, closure, 30*time.Second)
			root, err := envSubstitute(t, ctx, env, stack.CacheURL(), p.CachePub(), top)
			if err != nil {
				t.Fatal(err)
			}
			runTop(t, ctx, env, root, top, msg)
			if stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(), top); code != 0 {
				t.Fatalf("verify --cache: exit %d\n%s\n%s", code, stdout, stderr)
			}
			if stdout, stderr, code := cli(t, ctx, "verify", "--closure", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(), top); code != 0 {
				t.Fatalf("verify --closure: exit %d\n%s\n%s", code, stdout, stderr)
			}
			// The registry makes top's image from this version's NARs:
			// crane pulls every layer, checking each against its digest.
			ref := strings.TrimPrefix(stack.CacheURL(), "http://") + "/nix/" + filepath.Base(top)
			if out, err := exec.CommandContext(ctx, testproc.Crane(t), "pull", "--insecure", "--format", "oci", ref, t.TempDir()).CombinedOutput(); err != nil {
				t.Fatalf("%s: crane pull of top's image: %v\n%s", env, err, out)
			}
		})
	}
}

// TestNixVersionsVolunteer: builder a builds the sample on the host (Nix
// 2.8); a volunteer inside each Nix version (`provenix volunteer --once`,
// the static binary) rebuilds it from the staged closure and casts the
// second vote of a quorum of 2. Same bytes from two Nix versions.
func TestNixVersionsVolunteer(t *testing.T) {
	busybox := requireNix(t)
	for _, env := range testnix.Versions(t) {
		t.Run(env.String(), func(t *testing.T) {
			ctx := testctx.New(t, 4*time.Minute)
			dataDir, p, bs, stack := quorumStack(t)
			vol := bs[1]
			store := env.TempDir(t)
			wait := envVolunteerOnce(t, ctx, env, stack, p, vol, store)
			a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], filepath.Join("..", "..", "examples", "hello.nix"), "hello",
				"--arg", "busybox="+busybox, "--argstr", "message="+uniqueMessage(t))
			path := a.Outputs[0].Path
			wait()
			names := strings.Join(sigNames(t, stack.CacheURL(), path), ",")
			if !strings.Contains(names, "builder-a-1") || !strings.Contains(names, "builder-b-1") {
				t.Fatalf("%s: narinfo signatures %s: want the builder's and the volunteer's", env, names)
			}
			if _, _, code := cli(t, ctx, "verify", "--data-dir", dataDir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
				"--key", bs[0].id+"="+bs[0].pub, "--key", bs[1].id+"="+bs[1].pub, "--quorum", "2", path); code != 0 {
				t.Fatalf("verify --quorum 2: exit %d", code)
			}
			if _, err := os.Stat(env.HostPath(store + path)); err != nil {
				t.Fatalf("%s: the volunteer's store lacks %s: %v", env, path, err)
			}
		})
	}
}

// TestNixVersionsRunner runs the runner daemon (the static binary) inside
// Nix 2.8 (the host) and 2.34 (forky's chroot, with the chroot's
// nix-daemon and job user) against the real Gitea on the host. One job
// builds the sample and closure.nix -A top twice each: with `provenix
// build` (step capture) and plain `nix-build` (automatic capture). Each
// result must reach the cache complete enough that stock nix of that
// version installs it from an empty store, including closure.nix's
// fixed-output path, which is in the store before the job starts.
func TestNixVersionsRunner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the runner end-to-end test runs the runner as root with jobs as " + jobUser + "; run it as root (CI does)")
	}
	var envs []*testnix.Env
	for _, env := range testnix.Versions(t) {
		if env.IsHost() || env.Name == "forky" {
			envs = append(envs, env)
		}
	}
	forge := testgitea.Start(t)
	for _, env := range envs {
		t.Run(env.String(), func(t *testing.T) { runnerOnNix(t, forge, env) })
	}
}

func runnerOnNix(t *testing.T, forge *testgitea.Forge, env *testnix.Env) {
	ctx := testctx.New(t, 8*time.Minute)
	env.Daemon(t)
	bin := env.Provenix(t)
	runnerName := "nixver-" + env.Name
	builderID := "forgejo-runner:" + runnerName
	stack := startRunnerStack(t, builderID, "", up.Config{DataDir: t.TempDir()})
	p := stack.Paths()
	dataDir := p.Dir
	files := envFiles(t, env, p)
	runDir := env.TempDir(t)
	reg := env.Command(ctx, "sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", runDir, bin, "runner", "register", "--no-interactive",
		"--instance", forge.URL, "--token", forge.RunnerRegistrationToken(t), "--name", runnerName, "--labels", "nix-"+env.Name)
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("%s: runner register: %v\n%s", env, err, out)
	}
	cfg := fmt.Sprintf(`log:
  level: debug
runner:
  file: %s/.runner
  fetch_interval: 200ms
  report_interval: 200ms
  timeout: 5m
  envs:
    NIX_CONFIG: "substituters =\nexperimental-features = nix-command"
host:
  workdir_parent: %s/work
provenix:
  key: %s/builder.key
  job_user: %s
  nats_url: %s
  nats_token_file: %s/nats.token
`, runDir, env.TempDir(t), files, jobUser, stack.NATSURL(), files)
	if err := os.WriteFile(env.HostPath(runDir+"/config.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var runnerLog testlog.Buffer
	daemon := env.Command(context.Background(), bin, "--data-dir", env.TempDir(t), "runner", "daemon", "--config", runDir+"/config.yaml")
	daemon.Env = append(daemon.Environ(), "NIX_CONFIG=substituters =\nexperimental-features = nix-command")
	daemon.Stdout, daemon.Stderr = &runnerLog, &runnerLog
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		_ = daemon.Wait()
		if t.Failed() {
			t.Logf("runner log:\n%s", runnerLog.String())
		}
	})

	owner, repo := forge.CreateRepo(t, "nixver-"+env.Name)
	msg := uniqueMessage(t)
	bb := env.Busybox(t)
	// closure.nix's fixed-output derivation does not depend on the message:
	// its output is in the store before the job, as a source tarball
	// fetched by an earlier job would be. Content-addressed, it must still
	// reach the cache with the closure that needs it.
	env.Output(t, ctx, "nix-build", files+"/closure.nix", "-A", "fixed", "--arg", "busybox", bb, "--no-out-link")
	// The chroot has no git: the job reads the expressions from files the
	// test put where the job user can read them.
	workflow := fmt.Sprintf(`name: build
on: push
jobs:
  build:
    runs-on: nix-%[1]s
    steps:
      - name: hello, step capture
        run: provenix build %[2]s/hello.nix -A hello --arg busybox=%[3]s --argstr message=%[4]q
      - name: hello, automatic capture
        run: echo "plain-hello=$(nix-build %[2]s/hello.nix -A hello --arg busybox %[3]s --argstr message %[5]q --no-out-link)"
      - name: closure, step capture
        run: provenix build %[2]s/closure.nix -A top --arg busybox=%[3]s --argstr message=%[4]q
      - name: closure, automatic capture
        run: echo "plain-top=$(nix-build %[2]s/closure.nix -A top --arg busybox %[3]s --argstr message %[5]q --no-out-link)"
      - name: whoami
        run: id -un
`, env.Name, files, bb, msg, msg+" (plain)")
	forge.PutFile(t, owner, repo, ".forgejo/workflows/build.yml", []byte(workflow))
	job := forge.WaitJob(t, owner, repo, 6*time.Minute)
	logs := forge.JobLogs(t, owner, repo, job.ID)
	if job.Conclusion != "success" {
		t.Fatalf("%s: job %s\n%s", env, job.Conclusion, logs)
	}
	if !strings.Contains(logs, jobUser) {
		t.Errorf("%s: steps did not run as %s:\n%s", env, jobUser, logs)
	}
	find := func(re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(logs)
		if m == nil {
			t.Fatalf("%s: no %s in the job log:\n%s", env, re, logs)
		}
		return m[1]
	}
	hello := find(`out\s+(/nix/store/[0-9a-z]{32}-provenix-hello)\s`)
	plainHello := find(`plain-hello=(/nix/store/[0-9a-z]{32}-provenix-hello)`)
	top := find(`out\s+(/nix/store/[0-9a-z]{32}-closure-top)\s`)
	plainTop := find(`plain-top=(/nix/store/[0-9a-z]{32}-closure-top)`)

	installs := func(t *testing.T, path string, check func(t *testing.T, root string)) {
		waitNarinfos(t, ctx, stack, []string{path}, 30*time.Second)
		root, err := envSubstitute(t, ctx, env, stack.CacheURL(), p.CachePub(), path)
		if err != nil {
			t.Fatal(err)
		}
		check(t, root)
		if stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dataDir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
			"--key", builderID+"="+p.BuilderPub(), path); code != 0 || !strings.Contains(stdout, builderID) {
			t.Fatalf("verify: exit %d\n%s\n%s", code, stdout, stderr)
		}
	}
	helloSays := func(path, want string) func(*testing.T, string) {
		return func(t *testing.T, root string) {
			got, err := os.ReadFile(env.HostPath(root + path + "/share/message"))
			if err != nil || strings.TrimSpace(string(got)) != want {
				t.Fatalf("%s: substituted hello says %q (%v), want %q", env, got, err, want)
			}
		}
	}
	t.Run("hello-step", func(t *testing.T) {
		if !strings.Contains(logs, "outputs, step) as builder \""+builderID) {
			t.Errorf("no attestation of the provenix build step in the log")
		}
		installs(t, hello, helloSays(hello, msg))
	})
	t.Run("hello-automatic", func(t *testing.T) {
		if !strings.Contains(logs, "outputs, automatic) as builder \""+builderID) {
			t.Errorf("the plain nix-build was not attested automatically")
		}
		installs(t, plainHello, helloSays(plainHello, msg+" (plain)"))
	})
	t.Run("closure-step", func(t *testing.T) {
		installs(t, top, func(t *testing.T, root string) { runTop(t, ctx, env, root, top, msg) })
	})
	t.Run("closure-automatic", func(t *testing.T) {
		installs(t, plainTop, func(t *testing.T, root string) { runTop(t, ctx, env, root, plainTop, msg+" (plain)") })
	})
}

// TestNixVersionsFarm: a farm volunteer (`provenix volunteer --farm`, the
// static binary) inside each Nix version and one on the host (Nix 2.8)
// build a submitted chain with quorum 2 of distinct owners: each realises
// every derivation from the staged .drv closure with its own Nix, and the
// cache publishes each output only once both agree, signed by both: the
// same bytes from two Nix versions. (Substituting inputs from the cache
// in each version is TestNixVersionsClosure's.)
func TestNixVersionsFarm(t *testing.T) {
	busybox := requireNix(t)
	var host *testnix.Env
	envs := testnix.Versions(t)
	for _, env := range envs {
		if env.IsHost() {
			host = env
		}
	}
	if host == nil {
		t.Fatal("no host Nix among the versions")
	}
	for _, env := range envs {
		t.Run(env.String(), func(t *testing.T) {
			ctx := testctx.New(t, 4*time.Minute)
			dataDir, p, bs, stack := quorumStack(t)
			pub := readPub(t, p.CachePub())
			volunteer := func(env *testnix.Env, b qbuilder) {
				key, nixKey, token := envBuilderFiles(t, env, b, p)
				cmd := env.Command(ctx, env.Provenix(t), "volunteer", "--farm", "--store", env.TempDir(t), "--key", key,
					"--builder-id", b.id, "--owner", b.owner, "--nix-key", nixKey, "--nats-url", stack.NATSURL(), "--nats-token-file", token,
					"--nix-option", "substituters="+stack.CacheURL(), "--nix-option", "trusted-public-keys="+pub,
					"--nix-option", "narinfo-cache-negative-ttl=0")
				log := &testlog.Buffer{}
				cmd.Stdout, cmd.Stderr = log, log
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					cmd.Process.Signal(syscall.SIGTERM)
					cmd.Wait()
					if t.Failed() || os.Getenv("PROVENIX_TEST_SHOW_LOGS") != "" {
						t.Logf("%s (%s)'s log:\n%s", b.id, env, log.String())
					}
				})
			}
			volunteer(host, bs[0])
			volunteer(env, bs[1])

			sub := submitChain(t, ctx, dataDir, busybox, "--quorum", "2")
			if _, stderr := statusWatch(t, ctx, dataDir, sub.Set.ID); !strings.Contains(stderr, "3/3 done") {
				t.Fatalf("farm status --watch:\n%s", stderr)
			}
			st, err := farm.GetStatus(ctx, stack.Conn(), sub.Set.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range st.Derivations {
				g, err := farm.ReadGraph(ctx, []string{d.DrvPath}, nil)
				if err != nil {
					t.Fatal(err)
				}
				out := g.Node(d.DrvPath).Outputs["out"]
				names := strings.Join(sigNames(t, stack.CacheURL(), out), ",")
				if !strings.Contains(names, "builder-a-1") || !strings.Contains(names, "builder-b-1") {
					t.Errorf("%s: %s signed by %s: want the host's volunteer and %s's", env, out, names, env)
				}
			}
		})
	}
}

// envBuilderFiles installs what builder b needs inside env (its signing
// and Nix keys, the NATS token) and returns their paths there.
func envBuilderFiles(t *testing.T, env *testnix.Env, b qbuilder, p up.Paths) (key, nixKey, token string) {
	t.Helper()
	files := env.TempDir(t)
	return env.Install(t, b.key, files+"/builder.key", 0o600), env.Install(t, b.nixKey, files+"/builder.nix", 0o600),
		env.Install(t, p.NATSToken(), files+"/nats.token", 0o600)
}

// TestNixVersionsDiff: `provenix diff` on NARs that Nix versions other
// than the host's made. Builder a builds nardiff's unrepro date sample on
// the host (Nix 2.8); a volunteer inside each other version rebuilds it
// from the staged closure, so the two votes disagree; diff must read both
// NARs and name the file and the cause, as TestDiffDisputes does for two
// builds by the host's Nix.
func TestNixVersionsDiff(t *testing.T) {
	busybox := requireNix(t)
	for _, env := range testnix.Versions(t) {
		if env.IsHost() {
			continue // TestDiffDisputes
		}
		t.Run(env.String(), func(t *testing.T) {
			ctx := testctx.New(t, 4*time.Minute)
			dataDir, p, bs, stack := quorumStack(t)
			wait := envVolunteerOnce(t, ctx, env, stack, p, bs[1], env.TempDir(t))
			a := qbuild(t, ctx, stack.NATSURL(), p, bs[0], filepath.Join("..", "..", "nardiff", "testdata", "unrepro.nix"), "date",
				"--arg", "busybox="+busybox)
			path := a.Outputs[0].Path
			wait()
			waitVotes(t, stack.Conn(), path, 2)
			stdout, stderr, code := cli(t, ctx, "diff", "--json", "--data-dir", dataDir, "--nats-url", stack.NATSURL(),
				"--nats-token-file", p.NATSToken(), path)
			if code != 0 {
				t.Fatalf("%s: diff: exit %d\n%s\n%s", env, code, stdout, stderr)
			}
			var pd cachepush.PathDiff
			if err := json.Unmarshal([]byte(stdout), &pd); err != nil || len(pd.Comparisons) != 1 || pd.Comparisons[0].Report == nil {
				t.Fatalf("%s: diff --json: %v\n%s", env, err, stdout)
			}
			r := pd.Comparisons[0].Report
			if pd.Verdict != cachepush.VerdictDisputed || r.Differing != 1 || r.Files[0].Path != "/info" ||
				len(r.Causes) == 0 || r.Causes[0].Kind != nardiff.CauseTimestamp {
				t.Fatalf("%s: diff: verdict %s, report:\n%s", env, pd.Verdict, r.Text())
			}
		})
	}
}

// envVolunteerOnce starts `provenix volunteer --once` (the static binary)
// as builder vol inside env, with its store at store (inside env), and
// returns a wait that fails the test unless it took a rebuild request
// and exited 0.
func envVolunteerOnce(t *testing.T, ctx context.Context, env *testnix.Env, stack *up.Stack, p up.Paths, vol qbuilder, store string) (wait func()) {
	t.Helper()
	key, nixKey, token := envBuilderFiles(t, env, vol, p)
	done := make(chan string, 1)
	cmd := env.Command(ctx, env.Provenix(t), "volunteer", "--once", "--store", store, "--key", key, "--builder-id", vol.id,
		"--nix-key", nixKey, "--nats-url", stack.NATSURL(), "--nats-token-file", token, "--nix-option", "substituters=")
	go func() {
		out, err := cmd.CombinedOutput()
		done <- fmt.Sprintf("%v\n%s", err, out)
	}()
	return func() {
		t.Helper()
		select {
		case out := <-done:
			if !strings.HasPrefix(out, "<nil>") {
				t.Fatalf("%s: volunteer: %s", env, out)
			}
		case <-ctx.Done():
			t.Fatalf("%s: the volunteer never took the rebuild request", env)
		}
	}
}

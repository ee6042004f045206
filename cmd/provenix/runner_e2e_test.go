package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"

	"codeberg.org/provenix/provenix/cache-push/forgestatus"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/up"
)

// jobUser is the unprivileged account job steps run as; scripts/install-deps.sh
// creates it (in nix-users, so it can build through the Nix daemon).
const jobUser = "provenix-job"

// buildProvenix builds the real binary where the job user can run it:
// the runner starts its job processes from it, and job steps call it.
func buildProvenix(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(testfs.OpenDir(t), "provenix")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// requireNixDaemon makes sure unprivileged users can build: it starts
// nix-daemon for the test when none answers.
func requireNixDaemon(t testing.TB) {
	t.Helper()
	const sock = "/nix/var/nix/daemon-socket/socket"
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return
	}
	d := exec.Command(testproc.Tool(t, "nix-daemon", "apt-get install nix-bin"))
	d.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Start(); err != nil {
		t.Fatalf("nix-daemon: %v", err)
	}
	t.Cleanup(func() { _ = d.Process.Kill(); _ = d.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("nix-daemon did not open its socket")
}

// startRunnerStack runs a pipeline (embedded NATS, pusher and cache) in
// cfg.DataDir whose policy trusts builderID, a runner signing with the
// data directory's builder key, for x86_64-linux and aarch64-linux;
// extraPolicy is added to the policy as is.
func startRunnerStack(t *testing.T, builderID, extraPolicy string, cfg up.Config) *up.Stack {
	t.Helper()
	p := up.Paths{Dir: cfg.DataDir}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	pol := fmt.Sprintf("tenants: [default]\nsystems: [x86_64-linux, aarch64-linux]\n%sbuilders:\n  - id: %q\n    key: keys/builder.pub\n", extraPolicy, builderID)
	if err := os.WriteFile(p.Policy(), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	return startStack(t, cfg)
}

// TestRunnerAgainstGitea registers the runner with a real Gitea 1.26.4,
// lets it run a workflow that builds the sample with Nix as the job user,
// and follows the result to the cache and through verify.
func TestRunnerAgainstGitea(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the runner end-to-end test runs the runner as root with jobs as " + jobUser + "; run it as root (CI does)")
	}
	busybox := requireNix(t)
	requireNixDaemon(t)
	ctx := testctx.New(t, 8*time.Minute)
	bin := buildProvenix(t)
	forge := testgitea.Start(t)

	// The pipeline: embedded NATS, pusher and cache, trusting this runner.
	const runnerName = "e2e-runner"
	builderID := "forgejo-runner:" + runnerName
	// With the forge in its forges file: the pusher shows its verdicts
	// there.
	tokDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(tokDir, "gitea.token"), []byte(forge.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	forges, err := forgestatus.Parse([]byte(fmt.Sprintf("forges:\n  - {url: %q, token_file: gitea.token, builders: [%q], repos: [%q]}\n",
		forge.URL, builderID, forge.AdminUser+"/*")), tokDir)
	if err != nil {
		t.Fatal(err)
	}
	stack := startRunnerStack(t, builderID, "", up.Config{DataDir: t.TempDir(), Forges: forges})
	p := stack.Paths()
	dataDir := p.Dir

	// Register exactly as an operator would.
	runDir := t.TempDir()
	reg := exec.CommandContext(ctx, bin, "runner", "register", "--no-interactive",
		"--instance", forge.URL, "--token", forge.RunnerRegistrationToken(t), "--name", runnerName, "--labels", "nix,nix-x86_64-linux")
	reg.Dir = runDir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("runner register: %v\n%s", err, out)
	}
	if fi, err := os.Stat(filepath.Join(runDir, ".runner")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf(".runner: %v %v", fi, err)
	}
	startRunnerDaemon(t, bin, dataDir, runDir, "config", 1, "provenix:\n  job_user: "+jobUser+"\n", p, stack.NATSURL())

	owner, repo := forge.CreateRepo(t, "pkgs")
	const secret = "gitea-e2e-secret-value-42"
	forge.SetSecret(t, owner, repo, "MY_SECRET", secret)
	sample, err := os.ReadFile(filepath.Join("..", "..", "examples", "hello.nix"))
	if err != nil {
		t.Fatal(err)
	}
	forge.PutFile(t, owner, repo, "hello.nix", sample)
	// An action on the forge, used by name (resolved against the forge's
	// default actions URL) and by absolute URL.
	actOwner, actRepo := forge.CreateRepo(t, "greet")
	forge.PutFile(t, actOwner, actRepo, "action.yml", []byte(`name: greet
inputs:
  who:
    required: true
runs:
  using: composite
  steps:
    - shell: bash
      run: echo "greetings, ${{ inputs.who }}"
`))
	// This repository's action.yml, served by the forge as an action.
	actionYAML, err := os.ReadFile(filepath.Join("..", "..", "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	pxOwner, pxRepo := forge.CreateRepo(t, "provenix-action")
	forge.PutFile(t, pxOwner, pxRepo, "action.yml", actionYAML)
	msg := uniqueMessage(t)
	workflow := fmt.Sprintf(`name: build
on: push
jobs:
  build:
    runs-on: nix
    steps:
      - name: checkout
        run: |
          git clone -q "http://x-access-token:${{ github.token }}@%s/${{ github.repository }}.git" src
          git -C src log -1 --format=%%H
      - name: secret
        run: echo "the secret is ${{ secrets.MY_SECRET }}"
      - name: build
        run: provenix build src/hello.nix -A hello --arg busybox=%s --argstr message=%q
      - name: plain nix-build
        run: nix-build src/hello.nix -A hello --arg busybox %s --argstr message %q --no-out-link
      - name: action by name
        uses: %s/%s@main
        with:
          who: by-name
      - name: action by URL
        uses: %s/%s/%s@main
        with:
          who: by-url
      - name: provenix action
        id: px
        uses: %s/%s@main
        with:
          installables: src/hello.nix
          attr: hello
          args: busybox=%s
          argstrs: message=%s (action)
          nix-options: substituters=
      - name: action outputs
        run: echo "action verdict ${{ steps.px.outputs.verdict }} for ${{ steps.px.outputs.store-paths }}"
      - name: whoami
        run: id -un
`, strings.TrimPrefix(forge.URL, "http://"), busybox, msg, busybox, msg+" (plain)", actOwner, actRepo, forge.URL, actOwner, actRepo,
		pxOwner, pxRepo, busybox, msg)
	forge.PutFile(t, owner, repo, ".forgejo/workflows/build.yml", []byte(workflow))
	sha := forge.HeadSHA(t, owner, repo)

	job := forge.WaitJob(t, owner, repo, 5*time.Minute)
	logs := forge.JobLogs(t, owner, repo, job.ID)
	if job.Conclusion != "success" {
		t.Fatalf("job %s\n%s", job.Conclusion, logs)
	}
	if !strings.Contains(logs, "the secret is ***") || strings.Contains(logs, secret) {
		t.Errorf("secret not masked in the forge's log:\n%s", logs)
	}
	if !strings.Contains(logs, jobUser) {
		t.Errorf("steps did not run as %s:\n%s", jobUser, logs)
	}
	if !strings.Contains(logs, "outputs, step) as builder \""+builderID) {
		t.Errorf("no attestation of the provenix build step in the log:\n%s", logs)
	}
	// The plain nix-build was not asked for: the runner found it in its store.
	if !strings.Contains(logs, "outputs, automatic) as builder \""+builderID) {
		t.Errorf("the plain nix-build was not attested automatically:\n%s", logs)
	}
	if !strings.Contains(logs, "greetings, by-name") || !strings.Contains(logs, "greetings, by-url") {
		t.Errorf("remote actions did not run:\n%s", logs)
	}
	// The workflow step (action.yml) on this runner signs through the runner.
	if !regexp.MustCompile(`action verdict published for /nix/store/[0-9a-z]{32}-provenix-hello`).MatchString(logs) {
		t.Errorf("action.yml did not publish through the runner:\n%s", logs)
	}
	if strings.Count(logs, "outputs, step) as builder") < 2 {
		t.Errorf("the action's build was not attested by the runner:\n%s", logs)
	}
	if strings.Contains(logs, "Press RETURN") {
		t.Errorf("a pager waited for input:\n%s", logs)
	}
	// `provenix build` prints "  out  /nix/store/…-provenix-hello".
	found := regexp.MustCompile(`out\s+(/nix/store/[0-9a-z]{32}-provenix-hello)\s`).FindStringSubmatch(logs)
	if found == nil {
		t.Fatalf("no output path in the log:\n%s", logs)
	}

	t.Logf("job log:\n%s", logs)
	m := found[1]
	// NATS → pusher → cache, then verify with this runner's builder id.
	ni := waitNarinfo(t, stack.CacheURL(), m)
	if ni.StorePath != m {
		t.Fatalf("narinfo for %s", ni.StorePath)
	}
	stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dataDir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
		"--key", builderID+"="+p.BuilderPub(), m)
	if code != 0 || !strings.Contains(stdout, "verified") || !strings.Contains(stdout, builderID) {
		t.Fatalf("verify: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, owner+"/"+repo) {
		t.Errorf("verify output does not name the forge job:\n%s", stdout)
	}
	// The pusher's verdict on the commit the job built (the workflow
	// step sets statuses of the same context: look for the pusher's).
	deadline := time.Now().Add(time.Minute)
	for {
		sts, _, err := forge.Client().ListStatuses(owner, repo, sha, gitea.ListStatusesOption{})
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		ok := false
		for _, st := range sts {
			seen = append(seen, st.Context+"="+string(st.State)+": "+st.Description)
			ok = ok || (st.Context == "provenix/x86_64-linux" && st.State == gitea.StatusSuccess &&
				strings.Contains(st.Description, "1 of 1 independent builders agree"))
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no commit status from the pusher on %s/%s@%s; statuses: %q", owner, repo, sha, seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

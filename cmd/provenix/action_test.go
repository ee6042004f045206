package main

// 'provenix action' in a simulated Actions step: INPUT_* and GITHUB_* env,
// GITHUB_OUTPUT / GITHUB_STEP_SUMMARY files, a push event, and the real
// embedded stack whose policy trusts the step's key.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"

	"codeberg.org/provenix/provenix/action"
	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testfulcio"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/internal/testtsa"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/up"
)

const actionBuilderID = "forgejo-ci"

// actionEnv sets the environment of an Actions step and returns its
// RUNNER_TEMP, GITHUB_OUTPUT and GITHUB_STEP_SUMMARY.
func actionEnv(t *testing.T, inputs map[string]string) (tmp, outFile, summaryFile string) {
	t.Helper()
	d := t.TempDir()
	tmp = filepath.Join(d, "runner-temp")
	os.Mkdir(tmp, 0o700)
	outFile, summaryFile = filepath.Join(d, "output"), filepath.Join(d, "summary")
	event := filepath.Join(d, "event.json")
	os.WriteFile(event, []byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567","repository":{"name":"hello","full_name":"distro/hello","owner":{"name":"distro"}},"pusher":{"name":"alice"}}`), 0o644)
	for k, v := range map[string]string{
		"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": outFile, "GITHUB_STEP_SUMMARY": summaryFile, "GITHUB_ENV": filepath.Join(d, "env"),
		"GITHUB_EVENT_PATH": event, "GITHUB_EVENT_NAME": "push", "GITHUB_REPOSITORY": "distro/hello",
		"GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567", "GITHUB_REF": "refs/heads/main",
		"GITHUB_SERVER_URL": "https://forge.example", "GITHUB_RUN_ID": "42", "GITHUB_WORKFLOW": "build.yml",
		"GITHUB_JOB": "build", "GITHUB_ACTOR": "alice", "RUNNER_TEMP": tmp,
		"PROVENIX_RUNNER_SOCKET": "", "PROVENIX_RUNNER_TOKEN": "", "PROVENIX_NATS_URL": "",
	} {
		t.Setenv(k, v)
	}
	for _, in := range action.Inputs {
		t.Setenv("INPUT_"+strings.ToUpper(strings.ReplaceAll(in.Name, "-", "_")), "")
		t.Setenv("INPUT_"+strings.ToUpper(in.Name), "")
	}
	for k, v := range inputs {
		t.Setenv(k, v)
	}
	return tmp, outFile, summaryFile
}

// readOutputs parses a GITHUB_OUTPUT file (NAME<<DELIM lines).
func readOutputs(t *testing.T, file string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return map[string]string{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		name, delim, ok := strings.Cut(lines[i], "<<")
		if !ok {
			continue
		}
		var val []string
		for i++; i < len(lines) && lines[i] != delim; i++ {
			val = append(val, lines[i])
		}
		out[name] = strings.Join(val, "\n")
	}
	return out
}

// withoutMasks drops ::add-mask:: commands, the one place a secret may
// appear (the runner swallows them and masks the value from then on).
func withoutMasks(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "::add-mask::") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// startCIKeyStack runs a pipeline whose policy trusts a fresh key for
// actionBuilderID, as an operator would after handing the key to the
// forge as a secret. It returns the stack, the key's file (its public key
// is keyFile+".pub") and the key's PEM, the step's "key" input.
func startCIKeyStack(t *testing.T) (stack *up.Stack, keyFile string, keyPEM []byte) {
	t.Helper()
	dir := t.TempDir()
	p := up.Paths{Dir: dir}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	keyFile = filepath.Join(dir, "keys", "ci")
	if _, err := attest.GenerateKeyFiles(keyFile); err != nil {
		t.Fatal(err)
	}
	pol := policy.Example + "  - id: " + actionBuilderID + "\n    key: keys/ci.pub\n"
	if err := os.WriteFile(p.Policy(), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	return startStack(t, up.Config{DataDir: dir}), keyFile, testfs.Read(t, keyFile)
}

func TestActionKeySigning(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 5*time.Minute)
	stack, ciKey, keyPEM := startCIKeyStack(t)
	p := stack.Paths()
	dir := p.Dir
	wd, _ := os.Getwd()
	sample := filepath.Join(wd, "..", "..", "examples", "hello.nix")
	base := map[string]string{
		"INPUT_INSTALLABLES": sample,
		"INPUT_ATTR":         "hello",
		"INPUT_ARGS":         "busybox=" + busybox + "\n",
		"INPUT_NIX_OPTIONS":  "substituters=",
		"INPUT_NATS-URL":     stack.NATSURL(), // as Actions names it
		"INPUT_NATS_TOKEN":   stack.NATSToken(),
		"INPUT_SIGNING":      "key",
		"INPUT_BUILDER_ID":   actionBuilderID,
		"INPUT_CACHE_URL":    stack.CacheURL(),
		"INPUT_VERIFY":       "true",
	}
	inputs := func(extra map[string]string) map[string]string {
		m := map[string]string{"INPUT_ARGSTRS": "message=" + uniqueMessage(t)}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	tmp, outFile, summaryFile := actionEnv(t, inputs(map[string]string{"INPUT_KEY": string(keyPEM)}))
	stdout, stderr, code := cli(t, ctx, "action")
	if code != 0 {
		t.Fatalf("provenix action: exit %d\n%s\n%s", code, stdout, stderr)
	}
	outs := readOutputs(t, outFile)
	for _, k := range []string{"store-paths", "nar-hashes", "bundle-paths", "verdict"} {
		if outs[k] == "" {
			t.Errorf("output %s is missing: %v", k, outs)
		}
	}
	if outs["verdict"] != action.VerdictVerified {
		t.Errorf("verdict %q, want %q", outs["verdict"], action.VerdictVerified)
	}
	storePath := outs["store-paths"]
	if !strings.HasPrefix(storePath, "/nix/store/") || strings.Contains(storePath, "\n") {
		t.Fatalf("store-paths %q: want one store path", storePath)
	}
	summary, _ := os.ReadFile(summaryFile)
	if !strings.Contains(string(summary), "| output | NAR sha256 | builder | verdict |") ||
		!strings.Contains(string(summary), "| `"+storePath+"` | `"+outs["nar-hashes"]+"` | `"+actionBuilderID+"` | verified") {
		t.Errorf("job summary lacks the table row:\n%s", summary)
	}
	// The key is masked first and appears nowhere else.
	if !strings.Contains(stdout, "::add-mask::") || !strings.Contains(stdout, "::add-mask::"+stack.NATSToken()) {
		t.Errorf("secrets were not masked:\n%s", stdout)
	}
	outBytes, _ := os.ReadFile(outFile)
	for _, l := range strings.Split(string(keyPEM), "\n") {
		if len(l) < 8 || strings.HasPrefix(l, "-----") {
			continue
		}
		for name, s := range map[string]string{"stdout": withoutMasks(stdout), "stderr": stderr, "outputs": string(outBytes), "summary": string(summary)} {
			if strings.Contains(s, l) {
				t.Errorf("a line of the key appears in %s", name)
			}
		}
	}
	if strings.Contains(withoutMasks(stdout), stack.NATSToken()) || strings.Contains(stderr, stack.NATSToken()) {
		t.Error("the NATS token appears in the step's output")
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "provenix-key-*")); len(left) != 0 {
		t.Errorf("key files left in RUNNER_TEMP: %v", left)
	}

	// The cache has it and 'provenix verify --cache' (the data directory's
	// policy) accepts it, marked as signed by a job step with a key.
	waitNarinfo(t, stack.CacheURL(), storePath)
	vout, verr, code := cli(t, ctx, "verify", "--json", "--data-dir", dir, "--cache", stack.CacheURL(), storePath)
	var rep report
	if code != 0 || json.Unmarshal([]byte(vout), &rep) != nil || !rep.Verified || len(rep.Attestations) != 1 {
		t.Fatalf("verify --cache: exit %d\n%s\n%s", code, vout, verr)
	}
	a := rep.Attestations[0]
	if a.Builder != actionBuilderID || a.Workflow == nil || a.Workflow.Capture != action.CaptureJobStepKey || a.Workflow.Repository != "distro/hello" ||
		a.Workflow.RunID != "42" || a.Invocation != "https://forge.example/distro/hello/actions/runs/42" {
		t.Errorf("provenance does not mark the job-step signing: builder %q workflow %v invocation %q", a.Builder, a.Workflow, a.Invocation)
	}
	vtext, _, _ := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), storePath)
	if !strings.Contains(vtext, "captured by "+action.CaptureJobStepKey) {
		t.Errorf("verify does not show the job-step signing:\n%s", vtext)
	}
	// The bundle file under RUNNER_TEMP verifies on its own.
	if !strings.HasPrefix(outs["bundle-paths"], tmp) {
		t.Errorf("bundle-paths %q not under RUNNER_TEMP %s", outs["bundle-paths"], tmp)
	}
	if o, e, code := cli(t, ctx, "verify", "--key", ciKey+".pub", "--builder-id", actionBuilderID, "--bundle", outs["bundle-paths"], storePath); code != 0 {
		t.Fatalf("verify the bundle output: exit %d\n%s\n%s", code, o, e)
	}

	// Hostile: a missing or invalid key is an ::error:: and a non-zero exit,
	// and nothing is published.
	before, _ := filepath.Glob(filepath.Join(p.Cache(), "*.narinfo"))
	for name, key := range map[string]string{
		"missing": "",
		"invalid": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----",
	} {
		t.Run(name, func(t *testing.T) {
			_, outFile, _ := actionEnv(t, inputs(map[string]string{"INPUT_KEY": key}))
			stdout, stderr, code := cli(t, ctx, "action")
			if code == 0 || !strings.Contains(stdout, "::error::") {
				t.Fatalf("exit %d, want non-zero with ::error::\n%s\n%s", code, stdout, stderr)
			}
			if key != "" && (strings.Contains(withoutMasks(stdout), "bm90IGEga2V5IGF0IGFsbA==") || strings.Contains(stderr, "bm90IGEga2V5IGF0IGFsbA==")) {
				t.Error("the invalid key appears in the output")
			}
			if outs := readOutputs(t, outFile); len(outs) != 0 {
				t.Errorf("outputs set: %v", outs)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	if after, _ := filepath.Glob(filepath.Join(p.Cache(), "*.narinfo")); len(after) != len(before) {
		t.Errorf("the cache gained %d narinfo(s) from failed steps", len(after)-len(before))
	}
}

// TestActionForgeFeedback: on a tag build with a forge token, the step
// sets the provenix/<system> commit status on the real Gitea and attaches
// its bundles to the tag's release.
func TestActionForgeFeedback(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 5*time.Minute)
	forge := testgitea.Start(t)
	owner, repo := forge.CreateRepo(t, "pkgs")
	sha := forge.HeadSHA(t, owner, repo)
	forge.CreateRelease(t, owner, repo, "v1.0")

	stack, _, keyPEM := startCIKeyStack(t)
	wd, _ := os.Getwd()
	actionEnv(t, map[string]string{
		"INPUT_INSTALLABLES": filepath.Join(wd, "..", "..", "examples", "hello.nix"),
		"INPUT_ATTR":         "hello",
		"INPUT_ARGS":         "busybox=" + busybox,
		"INPUT_ARGSTRS":      "message=" + uniqueMessage(t),
		"INPUT_NIX_OPTIONS":  "substituters=",
		"INPUT_NATS_URL":     stack.NATSURL(),
		"INPUT_NATS_TOKEN":   stack.NATSToken(),
		"INPUT_SIGNING":      "key",
		"INPUT_KEY":          string(keyPEM),
		"INPUT_BUILDER_ID":   actionBuilderID,
		"INPUT_CACHE_URL":    stack.CacheURL(),
		"INPUT_VERIFY":       "true",
		"INPUT_FORGE_TOKEN":  forge.Token,
		"GITHUB_SERVER_URL":  forge.URL,
		"GITHUB_REPOSITORY":  owner + "/" + repo,
		"GITHUB_SHA":         sha,
		"GITHUB_REF":         "refs/tags/v1.0",
	})
	stdout, stderr, code := cli(t, ctx, "action")
	if code != 0 {
		t.Fatalf("provenix action: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if strings.Contains(withoutMasks(stdout+stderr), forge.Token) {
		t.Error("the forge token was printed")
	}
	statuses, _, err := forge.Client().ListStatuses(owner, repo, sha, gitea.ListStatusesOption{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, s := range statuses {
		if s.Context == "provenix/"+hostSystem(t) && s.State == gitea.StatusSuccess && strings.Contains(s.Description, "verified") &&
			strings.HasPrefix(s.TargetURL, stack.CacheURL()) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no successful provenix status on %s: %+v", sha, statuses)
	}
	rel, _, err := forge.Client().GetReleaseByTag(owner, repo, "v1.0")
	if err != nil {
		t.Fatal(err)
	}
	if len(rel.Attachments) != 1 || !strings.HasSuffix(rel.Attachments[0].Name, ".json") {
		t.Fatalf("release assets %+v: want the bundle", rel.Attachments)
	}
}

func hostSystem(t *testing.T) string {
	t.Helper()
	cfg, err := (&nix.Nix{}).Config(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cfg["system"]
}

// TestActionKeyless: the step signs keylessly — the job's OIDC token from
// the forge's token endpoint, a real Fulcio certificate, a real rekor-tiles
// entry and a real timestamp — and the pusher, whose policy trusts the
// workflow's identity (not any key) for the builder id, publishes it;
// `provenix verify --identity` accepts it from the cache.
func TestActionKeyless(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 5*time.Minute)
	log := testrekor.Start(t)
	tsa := testtsa.Start(t)
	fulcio := testfulcio.Start(t)
	trusted := fulcio.TrustedRoot(t, log.TrustedRoot.RekorLogs(), tsa.Authority)
	const who = "release@distro.example"
	const builderID = "forge:distro/pkgs"

	// The forge's OIDC token endpoint, as Forgejo offers it to a job.
	oidc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer job-request-token" || r.URL.Query().Get("audience") != "sigstore" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"value": fulcio.Token(t, who)})
	}))
	defer oidc.Close()

	dir := t.TempDir()
	p := up.Paths{Dir: dir}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	rootJSON, err := trusted.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(dir, "trusted_root.json")
	if err := os.WriteFile(rootFile, rootJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	pol := fmt.Sprintf("tenants: [default]\nsystems: [x86_64-linux, aarch64-linux]\ntrusted_root: trusted_root.json\nbuilders:\n  - id: %q\n    identity: {issuer: %q, san: %q}\n", builderID, fulcio.Issuer, who)
	if err := os.WriteFile(p.Policy(), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	stack := startStack(t, up.Config{DataDir: dir})
	wd, _ := os.Getwd()
	_, outFile, _ := actionEnv(t, map[string]string{
		"INPUT_INSTALLABLES":             filepath.Join(wd, "..", "..", "examples", "hello.nix"),
		"INPUT_ATTR":                     "hello",
		"INPUT_ARGS":                     "busybox=" + busybox,
		"INPUT_ARGSTRS":                  "message=" + uniqueMessage(t),
		"INPUT_NIX_OPTIONS":              "substituters=",
		"INPUT_NATS_URL":                 stack.NATSURL(),
		"INPUT_NATS_TOKEN":               stack.NATSToken(),
		"INPUT_SIGNING":                  "keyless",
		"INPUT_BUILDER_ID":               builderID,
		"INPUT_FULCIO_URL":               fulcio.URL,
		"INPUT_REKOR_URL":                log.URL,
		"INPUT_TSA_URL":                  tsa.URL,
		"ACTIONS_ID_TOKEN_REQUEST_URL":   oidc.URL + "/token?run=1",
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN": "job-request-token",
	})
	stdout, stderr, code := cli(t, ctx, "action")
	if code != 0 {
		t.Fatalf("provenix action: exit %d\n%s\n%s", code, stdout, stderr)
	}
	outs := readOutputs(t, outFile)
	path := strings.Fields(outs["store-paths"])[0]
	waitNarinfo(t, stack.CacheURL(), path)
	vout, verr, vcode := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
		"--identity", builderID+"="+fulcio.Issuer+","+who, "--trusted-root", rootFile, path)
	if vcode != 0 || !strings.Contains(vout, "job-step-keyless") {
		t.Fatalf("verify --identity: exit %d\n%s\n%s", vcode, vout, verr)
	}
	// Another workflow's identity is not trusted for this builder id.
	if _, _, c := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(),
		"--identity", builderID+"="+fulcio.Issuer+",mallory@distro.example", "--trusted-root", rootFile, path); c != exitFailed {
		t.Fatalf("verify with another identity: exit %d, want %d", c, exitFailed)
	}
}

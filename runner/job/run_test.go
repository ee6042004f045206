package job

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const childArg = "provenix-job-test-child"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		if err := Serve(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runJob runs payload through the real act engine on this host and returns
// the events.
func runJob(t *testing.T, payload string, mod func(*Spec)) []Event {
	t.Helper()
	dir := t.TempDir()
	ws := filepath.Join(dir, "ws")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{
		TaskID:  1,
		Payload: []byte(payload),
		Context: map[string]any{
			"server_url": "http://forge.invalid", "repository": "o/r", "repository_owner": "o",
			"ref": "refs/heads/main", "sha": "0123456789abcdef0123456789abcdef01234567",
			"event_name": "push", "actor": "alice", "run_id": "7", "workflow": "ci.yml", "job": "build",
			"token": "tasktoken123", "event": map[string]any{"ref": "refs/heads/main"},
			"forgejo_actions_id_token_request_url": "http://forge.invalid/oidc",
		},
		Secrets:        map[string]string{"SEKRIT": "hunter2-very-secret"},
		Vars:           map[string]string{"GREETING": "hello-var"},
		Labels:         []string{"nix"},
		Workdir:        ws,
		ActionCacheDir: filepath.Join(dir, "cache"),
		Env:            map[string]string{"PATH": os.Getenv("PATH"), "HOME": dir},
	}
	if mod != nil {
		mod(spec)
	}
	// The engine runs in a child process, as in production. It also keeps
	// nektos/act's own data race (its pty writer's AutoStop flag,
	// pkg/container/host_environment.go:342 in v0.2.89) out of this
	// package's race-detected tests: the child reports it on stderr and
	// is told not to turn it into its exit status.
	in, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], childArg)
	cmd.Env = append(os.Environ(), "GORACE=exitcode=0")
	cmd.Stdin = bytes.NewReader(in)
	var buf, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("job process: %v\n%s", err, stderr.String())
	}
	var evs []Event
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		evs = append(evs, e)
	}
	if len(evs) == 0 || !evs[len(evs)-1].Done {
		t.Fatalf("no Done event last: %+v", evs)
	}
	return evs
}

func rawLines(evs []Event, step string) string {
	var b strings.Builder
	for _, e := range evs {
		if e.Raw && e.Step == step {
			b.WriteString(e.Msg + "\n")
		}
	}
	return b.String()
}

func stepResult(evs []Event, step string) string {
	r := ""
	for _, e := range evs {
		if e.Step == step && e.StepResult != "" && (e.Stage == "Main" || e.Stage == "") {
			r = e.StepResult
		}
	}
	return r
}

func TestRunSemantics(t *testing.T) {
	payload := `
name: ci
on: push
env:
  LEVEL: workflow
jobs:
  build:
    runs-on: nix
    needs: [prep]
    outputs:
      answer: ${{ steps.out.outputs.answer }}
    env:
      LEVEL: job
    defaults:
      run:
        shell: bash
    steps:
      - id: setup
        run: mkdir -p sub && echo x > sub/a.txt
      - id: ctx
        run: |
          echo "repo=${{ github.repository }} sha=${{ github.sha }} actor=${{ github.actor }}"
          echo "var=${{ vars.GREETING }} need=${{ needs.prep.outputs.thing }} result=${{ needs.prep.result }}"
          echo "level=$LEVEL step=$STEPV runner=${{ runner.os }}"
          echo "secret=${{ secrets.SEKRIT }}"
          echo "oidc=$ACTIONS_ID_TOKEN_REQUEST_URL"
        env:
          STEPV: s1
      - id: out
        run: |
          echo "answer=42" >> "$GITHUB_OUTPUT"
          echo "FROM_ENV=carried" >> "$GITHUB_ENV"
          mkdir -p "$RUNNER_TEMP/bin" && printf '#!/bin/sh\necho tool-ran\n' > "$RUNNER_TEMP/bin/mytool" && chmod +x "$RUNNER_TEMP/bin/mytool"
          echo "$RUNNER_TEMP/bin" >> "$GITHUB_PATH"
          echo "::add-mask::masked-at-runtime"
          echo "value masked-at-runtime here"
          echo "## summary" >> "$GITHUB_STEP_SUMMARY"
      - id: use
        run: echo "got ${{ steps.out.outputs.answer }} $FROM_ENV $(mytool)"
      - id: fails
        run: exit 3
        continue-on-error: true
      - id: skipped
        if: ${{ false }}
        run: echo never
      - id: wd
        working-directory: sub
        run: pwd
      - id: hash
        run: echo "hash=${{ hashFiles('sub/*.txt') }}"
      - id: sh
        shell: sh
        run: echo "posix $0"
`
	evs := runJob(t, payload, func(s *Spec) {
		s.Needs = map[string]Need{"prep": {Outputs: map[string]string{"thing": "from-prep"}, Result: "success"}}
	})
	done := evs[len(evs)-1]
	if done.JobResult != "success" {
		t.Fatalf("job result %q (%s); events:\n%s", done.JobResult, done.Error, dump(evs))
	}
	if done.Outputs["answer"] != "42" {
		t.Errorf("job outputs %v", done.Outputs)
	}
	ctxOut := rawLines(evs, "ctx")
	for _, want := range []string{
		"repo=o/r sha=0123456789abcdef0123456789abcdef01234567 actor=alice",
		"var=hello-var need=from-prep result=success",
		"level=job step=s1 runner=Linux",
		"secret=***",
		"oidc=http://forge.invalid/oidc",
	} {
		if !strings.Contains(ctxOut, want) {
			t.Errorf("ctx step output lacks %q:\n%s", want, ctxOut)
		}
	}
	all := dump(evs)
	for _, leaked := range []string{"hunter2-very-secret", "masked-at-runtime", "tasktoken123"} {
		if strings.Contains(all, leaked) {
			t.Errorf("%q leaked into the log", leaked)
		}
	}
	if got := rawLines(evs, "use"); !strings.Contains(got, "got 42 carried tool-ran") {
		t.Errorf("use step: %q", got)
	}
	if r := stepResult(evs, "fails"); r != "failure" {
		t.Errorf("continue-on-error step result %q", r)
	}
	if r := stepResult(evs, "skipped"); r != "skipped" {
		t.Errorf("if: false step result %q", r)
	}
	if got := rawLines(evs, "wd"); !strings.HasSuffix(strings.TrimSpace(got), "/sub") {
		t.Errorf("working-directory: %q", got)
	}
	if got := rawLines(evs, "hash"); !strings.Contains(got, "hash=") || strings.Contains(got, "hash=\n") {
		t.Errorf("hashFiles: %q", got)
	}
	if got := rawLines(evs, "sh"); !strings.Contains(got, "posix") {
		t.Errorf("sh shell: %q", got)
	}
}

func TestRunCompositeLocalAction(t *testing.T) {
	payload := `
on: push
jobs:
  j:
    runs-on: nix
    steps:
      - run: |
          mkdir -p .forgejo/actions/greet
          echo "$ACTION_B64" | base64 -d > .forgejo/actions/greet/action.yml
      - uses: ./.forgejo/actions/greet
        id: greet
        with:
          who: world
      - run: echo "said ${{ steps.greet.outputs.said }}"
        id: after
`
	action := `name: greet
inputs:
  who:
    required: true
outputs:
  said:
    value: ${{ steps.s.outputs.said }}
runs:
  using: composite
  steps:
    - id: s
      shell: bash
      run: echo "hello ${{ inputs.who }}" && echo "said=hello-${{ inputs.who }}" >> "$GITHUB_OUTPUT"
`
	evs := runJob(t, payload, func(s *Spec) { s.Env["ACTION_B64"] = base64.StdEncoding.EncodeToString([]byte(action)) })
	if d := evs[len(evs)-1]; d.JobResult != "success" {
		t.Fatalf("result %q %s\n%s", d.JobResult, d.Error, dump(evs))
	}
	if got := rawLines(evs, "greet"); !strings.Contains(got, "hello world") {
		t.Errorf("composite output: %q", got)
	}
	if got := rawLines(evs, "after"); !strings.Contains(got, "said hello-world") {
		t.Errorf("composite outputs: %q", got)
	}
}

func TestRunFailureAndNeedsFailure(t *testing.T) {
	evs := runJob(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: exit 1\n      - run: echo unreachable\n      - if: failure()\n        run: echo cleanup-ran\n", nil)
	d := evs[len(evs)-1]
	if d.JobResult != "failure" {
		t.Fatalf("result %q", d.JobResult)
	}
	if !strings.Contains(rawLines(evs, "2"), "cleanup-ran") {
		t.Errorf("the if: failure() step did not run:\n%s", dump(evs))
	}
	if got := rawLines(evs, "1"); got != "" || stepResult(evs, "1") != "skipped" {
		t.Errorf("the step after the failure ran (%q, result %q):\n%s", got, stepResult(evs, "1"), dump(evs))
	}
}

func TestParseRejects(t *testing.T) {
	for name, payload := range map[string]string{
		"empty":    "",
		"garbage":  "{{{{",
		"two jobs": "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: a}]\n  b:\n    runs-on: x\n    steps: [{run: b}]\n",
		"no steps": "on: push\njobs:\n  a:\n    runs-on: x\n",
		"bad step": "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{name: nothing}]\n",
		"both":     "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: a, uses: b/c@d}]\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(payload)); !errors.Is(err, ErrPayload) {
				t.Fatalf("err = %v, want ErrPayload", err)
			}
		})
	}
}

func dump(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		j, _ := json.Marshal(e)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestRunNodeAction(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("node actions need node on PATH (Debian: apt-get install nodejs)")
	}
	action := `name: node-greet
inputs:
  who:
    required: true
outputs:
  greeting:
    description: the greeting
runs:
  using: node20
  main: index.js
  post: post.js
`
	index := `const fs = require('fs');
const who = process.env['INPUT_WHO'];
console.log('node says hi to ' + who);
fs.appendFileSync(process.env['GITHUB_OUTPUT'], 'greeting=hi-' + who + '\n');
fs.appendFileSync(process.env['GITHUB_STATE'], 'saved=' + who + '\n');
`
	post := "console.log('post sees state ' + process.env['STATE_saved']);\n"
	payload := `on: push
jobs:
  j:
    runs-on: nix
    steps:
      - run: |
          mkdir -p act && cd act
          echo "$A" | base64 -d > action.yml
          echo "$I" | base64 -d > index.js
          echo "$P" | base64 -d > post.js
      - id: n
        uses: ./act
        with:
          who: forge
      - run: echo "output ${{ steps.n.outputs.greeting }}"
`
	enc := base64.StdEncoding.EncodeToString
	evs := runJob(t, payload, func(s *Spec) {
		s.Env["A"], s.Env["I"], s.Env["P"] = enc([]byte(action)), enc([]byte(index)), enc([]byte(post))
	})
	if d := evs[len(evs)-1]; d.JobResult != "success" {
		t.Fatalf("result %q %s\n%s", d.JobResult, d.Error, dump(evs))
	}
	all := dump(evs)
	for _, want := range []string{"node says hi to forge", "output hi-forge", "post sees state forge"} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q:\n%s", want, all)
		}
	}
}

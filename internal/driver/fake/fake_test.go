package fake

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

func nextEvent(t *testing.T, d *Driver) driver.Event {
	t.Helper()
	select {
	case ev := <-d.Events():
		return ev
	case <-time.After(time.Second):
		t.Fatal("no driver event")
		return driver.Event{}
	}
}

func TestLifecycleIsRecordedAndReported(t *testing.T) {
	ctx := context.Background()
	d := New()
	st, err := d.Start(ctx, &driver.VMConfig{Name: "web", UID: "u1", Epoch: 3, Grants: map[string]int64{"shared": 7}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.PID == 0 || st.Epoch != 3 || st.Grants["shared"] != 7 || st.QEMUStatus != "running" {
		t.Fatalf("status after start: %+v", st)
	}
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "web"}); !errors.Is(err, driver.ErrAlreadyRunning) {
		t.Fatalf("second start of a running VM: %v, want ErrAlreadyRunning", err)
	}
	if err := d.Destroy("web"); err == nil {
		t.Fatal("destroyed a running VM")
	}
	if err := d.Stop(ctx, "web", time.Second); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Inspect("web"); st.Running || st.ExitReason != "guest-shutdown" {
		t.Fatalf("after stop: %+v", st)
	}
	if ev := nextEvent(t, d); ev.Type != driver.EventExited || ev.Status.Name != "web" {
		t.Fatalf("event %+v, want web exited", ev)
	}
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "web"}); err != nil {
		t.Fatalf("start after stop: %v", err)
	}
	if err := d.Kill(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Inspect("web"); st.Running || st.ExitReason != "killed" {
		t.Fatalf("after kill: %+v", st)
	}
	if err := d.Destroy("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Inspect("web"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("inspect after destroy: %v", err)
	}
	if err := d.Kill(ctx, "nope"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("kill of an unknown VM: %v", err)
	}
	if d.Starts("web") != 2 || d.Stops("web") != 1 || d.Kills("web") != 1 || d.Count(OpStart, "web") != 3 {
		t.Errorf("counts: starts %d (attempts %d) stops %d kills %d, want 2 (3) 1 1", d.Starts("web"), d.Count(OpStart, "web"), d.Stops("web"), d.Kills("web"))
	}
}

func TestScriptedFailures(t *testing.T) {
	ctx := context.Background()
	d := New()
	boom := errors.New("no such image")
	d.FailStart("db", boom)
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "db"}); !errors.Is(err, boom) {
		t.Fatalf("scripted start failure: %v", err)
	}
	if len(d.List()) != 0 || d.Starts("db") != 0 {
		t.Fatal("a failed start left a VM behind")
	}
	d.FailStart("db", nil)
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "db"}); err != nil {
		t.Fatal(err)
	}
	if !d.Crash("db", "") {
		t.Fatal("crash of a running VM refused")
	}
	if st, _ := d.Inspect("db"); st.Running || st.ExitReason != "crashed" {
		t.Fatalf("after crash: %+v", st)
	}
	if d.Crash("db", "") {
		t.Fatal("crashed a VM that was not running")
	}
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "db"}); err != nil {
		t.Fatal(err)
	}
	d.SetUnresponsive("db", true)
	if err := d.Reset(ctx, "db"); !errors.Is(err, ErrUnresponsive) {
		t.Fatalf("reset of an unresponsive VM: %v", err)
	}
	if err := d.StartMigration(ctx, "db", driver.MigrateSpec{}); !errors.Is(err, ErrUnresponsive) {
		t.Fatalf("migration of an unresponsive VM: %v", err)
	}
	if err := d.Stop(ctx, "db", time.Second); err != nil || d.Running("db") {
		t.Fatalf("stop of an unresponsive VM must end it (killed): %v", err)
	}
	if st, _ := d.Inspect("db"); st.ExitReason != "killed" {
		t.Fatalf("exit reason %q, want killed", st.ExitReason)
	}
}

func TestRecoverReattachesOrKillsUnresponsive(t *testing.T) {
	d := New()
	d.Leave(driver.Status{Name: "ok", UID: "u-ok", Epoch: 2, Running: true})
	d.Leave(driver.Status{Name: "hung", UID: "u-hung", Epoch: 2, Running: true})
	d.Leave(driver.Status{Name: "gone", Epoch: 2, ExitReason: "exited-unwatched"})
	d.SetUnresponsive("hung", true)
	if len(d.List()) != 0 {
		t.Fatal("VMs of a previous agent are known before Recover")
	}
	found, err := d.Recover(context.Background())
	if err != nil || len(found) != 3 {
		t.Fatalf("recover: %v, %+v", err, found)
	}
	if !d.Running("ok") || d.Running("hung") || d.Running("gone") {
		t.Fatalf("after recover: %+v", d.List())
	}
	if st, _ := d.Inspect("hung"); st.ExitReason != "unresponsive" {
		t.Errorf("unresponsive VM exit reason %q", st.ExitReason)
	}
	if d.Count(OpKillUnresponsive, "hung") != 1 || d.Count(OpKillUnresponsive, "ok") != 0 {
		t.Errorf("calls %+v", d.Calls())
	}
	got := map[string]driver.EventType{}
	for range 2 {
		ev := nextEvent(t, d)
		got[ev.Status.Name] = ev.Type
	}
	if got["ok"] != driver.EventReattached || got["hung"] != driver.EventExited {
		t.Errorf("events %v", got)
	}
}

func TestHoldStartsBlocksASecondCopy(t *testing.T) {
	ctx := context.Background()
	d := New()
	release := d.HoldStarts()
	done := make(chan error, 1)
	go func() {
		_, err := d.Start(ctx, &driver.VMConfig{Name: "web"})
		done <- err
	}()
	for d.StartsInProgress() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "web"}); !errors.Is(err, driver.ErrAlreadyRunning) {
		t.Fatalf("start while another is in progress: %v", err)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d.Starts("web") != 1 || !d.Running("web") {
		t.Fatalf("starts %d running %v", d.Starts("web"), d.Running("web"))
	}
}

func TestMigrationAndOptionalAbilities(t *testing.T) {
	ctx := context.Background()
	d := New()
	d.ConsoleDir = "/run/fake"
	if d.ConsolePath("web") != "/run/fake/web.log" {
		t.Errorf("console path %s", d.ConsolePath("web"))
	}
	d.StartProbe(ctx)
	if !d.Probed() {
		t.Error("probe not recorded")
	}
	if _, err := d.Start(ctx, &driver.VMConfig{Name: "src"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.PrepareIncoming(ctx, "src", driver.IncomingSpec{ListenIP: "10.0.0.2"}); err == nil {
		t.Error("prepared a VM not started to receive a migration")
	}
	if err := d.StartMigration(ctx, "src", driver.MigrateSpec{}); err != nil {
		t.Fatal(err)
	}
	if err := d.StartPostcopy(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if mi, _ := d.MigrationInfo(ctx, "src"); mi.Status != driver.MigrationPostcopyActive {
		t.Errorf("migration status %s", mi.Status)
	}
	d.SetMigration("src", driver.MigrationInfo{Status: driver.MigrationCompleted})
	if st, _ := d.Inspect("src"); st.QEMUStatus != "postmigrate" {
		t.Errorf("source after completion: %s", st.QEMUStatus)
	}
	st, err := d.Start(ctx, &driver.VMConfig{Name: "dst", Incoming: "defer"})
	if err != nil || st.QEMUStatus != "inmigrate" {
		t.Fatalf("incoming start: %+v %v", st, err)
	}
	in, err := d.PrepareIncoming(ctx, "dst", driver.IncomingSpec{ListenIP: "10.0.0.2", NBDDisks: []int{0}})
	if err != nil || in.URI == "" || len(in.NBD) != 1 {
		t.Fatalf("prepare incoming: %+v %v", in, err)
	}
	if err := d.FinishIncoming(ctx, "dst"); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Inspect("dst"); st.QEMUStatus != "running" {
		t.Errorf("destination after finish: %s", st.QEMUStatus)
	}
}

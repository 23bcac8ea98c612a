package fake

import (
	"context"
	"fmt"

	"github.com/vigilha/vigil/internal/driver"
)

// The migration ability, in memory: a source's migration is "active" from
// StartMigration until the test calls SetMigration (completed, failed...),
// and a destination started with VMConfig.Incoming waits until
// FinishIncoming resumes it.

// migrating returns a running VM whose monitor answers; callers hold mu.
func (d *Driver) migrating(name string) (*vm, error) {
	v, err := d.get(name)
	if err != nil {
		return nil, err
	}
	if !v.status.Running {
		return nil, fmt.Errorf("%s: not running", name)
	}
	if v.unresponsive {
		return nil, fmt.Errorf("%s: %w", name, ErrUnresponsive)
	}
	return v, nil
}

// PrepareIncoming makes a VM started with Incoming wait for a migration.
func (d *Driver) PrepareIncoming(_ context.Context, name string, s driver.IncomingSpec) (driver.Incoming, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err != nil {
		return driver.Incoming{}, err
	}
	if v.cfg.Incoming == "" {
		return driver.Incoming{}, fmt.Errorf("prepare incoming %s: not started to receive a migration", name)
	}
	in := driver.Incoming{URI: fmt.Sprintf("tcp:%s:4444", s.ListenIP)}
	for _, disk := range s.NBDDisks {
		in.NBD = append(in.NBD, driver.NBDExport{Disk: disk, Host: s.ListenIP, Port: 10809, Export: fmt.Sprintf("%s-%d", name, disk)})
	}
	v.incoming = driver.MigrationInfo{Status: driver.MigrationSetup}
	return in, nil
}

// FinishIncoming resumes a destination.
func (d *Driver) FinishIncoming(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err != nil {
		return err
	}
	v.status.QEMUStatus = "running"
	v.incoming.Status = driver.MigrationCompleted
	d.emit(driver.EventStateChanged, v.status)
	return nil
}

// IncomingStatus is the destination's view; an unresponsive monitor
// answers with an error.
func (d *Driver) IncomingStatus(_ context.Context, name string) (driver.MigrationInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(name)
	if err != nil {
		return driver.MigrationInfo{}, err
	}
	if v.unresponsive {
		return driver.MigrationInfo{}, fmt.Errorf("%s: %w", name, ErrUnresponsive)
	}
	return v.incoming, nil
}

// MirrorDisks reports every mirror in sync at once.
func (d *Driver) MirrorDisks(_ context.Context, name string, targets []driver.MirrorTarget, _ int64, progress func(done, total int64)) error {
	d.mu.Lock()
	_, err := d.migrating(name)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if progress != nil {
		n := int64(len(targets))
		progress(n, n)
	}
	return nil
}

// EndMirrors ends the mirrors.
func (d *Driver) EndMirrors(_ context.Context, name string, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, err := d.get(name)
	return err
}

// StartMigration makes the source's migration active.
func (d *Driver) StartMigration(_ context.Context, name string, _ driver.MigrateSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err != nil {
		return err
	}
	if v.migration.Status.Running() {
		return fmt.Errorf("start migration %s: one is already running", name)
	}
	v.migration = driver.MigrationInfo{Status: driver.MigrationActive}
	return nil
}

// MigrationInfo is the source's view.
func (d *Driver) MigrationInfo(_ context.Context, name string) (driver.MigrationInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(name)
	if err != nil {
		return driver.MigrationInfo{}, err
	}
	return v.migration, nil
}

// TuneMigration accepts any tuning of a running migration.
func (d *Driver) TuneMigration(_ context.Context, name string, _ driver.Tuning) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err == nil && !v.migration.Status.Running() {
		err = fmt.Errorf("tune migration %s: none running", name)
	}
	return err
}

// StartPostcopy switches a running migration to post-copy.
func (d *Driver) StartPostcopy(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err != nil {
		return err
	}
	if v.migration.Status != driver.MigrationActive {
		return fmt.Errorf("postcopy %s: migration is %s", name, v.migration.Status)
	}
	v.migration.Status = driver.MigrationPostcopyActive
	return nil
}

// CancelMigration aborts it; the source keeps running.
func (d *Driver) CancelMigration(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err != nil {
		return err
	}
	if v.migration.Status.Running() {
		v.migration.Status = driver.MigrationCancelled
	}
	return nil
}

// ResumeSource resumes a source paused by a completed migration.
func (d *Driver) ResumeSource(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.migrating(name)
	if err != nil {
		return err
	}
	v.status.QEMUStatus = "running"
	d.emit(driver.EventStateChanged, v.status)
	return nil
}

// SetMigration scripts the source's migration (completed, failed...). A
// completed one leaves the source paused ("postmigrate"), as QEMU does.
func (d *Driver) SetMigration(name string, info driver.MigrationInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[name]; ok {
		v.migration = info
		if info.Status == driver.MigrationCompleted {
			v.status.QEMUStatus = "postmigrate"
		}
	}
}

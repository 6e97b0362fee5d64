package main

// Storage capacity tracking, as csi-provisioner --enable-capacity does it for linstor-csi: one
// CSIStorageCapacity per (LINSTOR StorageClass, node), holding the free space a volume of that
// class can get on the node. The scheduler's VolumeBinding plugin reads them (the CSIDriver has
// storageCapacity: true) and skips nodes without room for a WaitForFirstConsumer claim.

import (
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/klog/v2"
)

const driverNameLabel = "csi.storage.k8s.io/drivername"

type capacityPublisher struct {
	client    kubernetes.Interface
	namespace string
	source    *provisioner
	classes   storagelisters.StorageClassLister
	wake      chan struct{}
}

func newCapacityPublisher(client kubernetes.Interface, namespace string, source *provisioner, classes storagelisters.StorageClassLister) *capacityPublisher {
	return &capacityPublisher{client: client, namespace: namespace, source: source, classes: classes, wake: make(chan struct{}, 1)}
}

// Trigger asks for a refresh without blocking (changes coalesce).
func (c *capacityPublisher) Trigger() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *capacityPublisher) Run(ctx context.Context) {
	ticker := time.NewTicker(30 * time.Second)
	defer ticker.Stop()
	for {
		if err := c.sync(ctx); err != nil {
			klog.Errorf("storage capacity: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-ticker.C:
		}
	}
}

// Desired capacity objects, by name.
func (c *capacityPublisher) desired() (map[string]*storagev1.CSIStorageCapacity, error) {
	classes, err := c.classes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	satellites := c.source.Satellites()
	usage := c.source.Usage()
	want := map[string]*storagev1.CSIStorageCapacity{}
	for _, class := range classes {
		if class.Provisioner != linstorDriver {
			continue
		}
		params, err := ParseParams(class.Parameters)
		if err != nil {
			continue // the class is refused at provisioning time, with an event
		}
		for _, s := range satellites {
			free := int64(0)
			if s.Online {
				if _, best := bestPool(s, params.StoragePools, usage); best > 0 {
					free = best
				}
			}
			name := fmt.Sprintf("csisc-%x", sha256.Sum256([]byte(class.Name+"\x00"+s.Name)))[:22]
			want[name] = &storagev1.CSIStorageCapacity{
				ObjectMeta: metav1.ObjectMeta{
					Name:      name,
					Namespace: c.namespace,
					Labels:    map[string]string{driverNameLabel: linstorDriver, "csi.storage.k8s.io/managed-by": "external-provisioner"},
				},
				NodeTopology:     &metav1.LabelSelector{MatchLabels: map[string]string{linstorNodeKey: s.Name}},
				StorageClassName: class.Name,
				Capacity:         resource.NewQuantity(free, resource.BinarySI),
			}
		}
	}
	return want, nil
}

func (c *capacityPublisher) sync(ctx context.Context) error {
	want, err := c.desired()
	if err != nil {
		return err
	}
	api := c.client.StorageV1().CSIStorageCapacities(c.namespace)
	have, err := api.List(ctx, metav1.ListOptions{LabelSelector: driverNameLabel + "=" + linstorDriver})
	if err != nil {
		return err
	}
	for i := range have.Items {
		existing := &have.Items[i]
		wanted, ok := want[existing.Name]
		if !ok {
			if err := api.Delete(ctx, existing.Name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			continue
		}
		delete(want, existing.Name)
		if existing.Capacity != nil && existing.Capacity.Cmp(*wanted.Capacity) == 0 {
			continue
		}
		existing.Capacity = wanted.Capacity
		if _, err := api.Update(ctx, existing, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	for _, wanted := range want {
		if _, err := api.Create(ctx, wanted, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

use vmtest::vm_test;

#[vm_test]
const fn constant() {}

#[vm_test]
unsafe fn dangerous() {}

#[vm_test]
extern "C" fn foreign() {}

#[vm_test]
#[test]
fn twice_registered() {}

#[vm_test]
#[should_panic]
fn panics_with_result() -> Result<(), String> {
    Ok(())
}

#[vm_test]
#[vmtest::vm_test]
fn applied_twice() {}

fn main() {}

//! The cases under libtest.

use core::prelude::v1::test as twin;

mod cases;
